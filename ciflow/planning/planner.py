"""Planning a pipeline: its modules as a scheduling problem, the schedule as a plan.

`plan_pipeline` turns a pipeline, its duration history and the declared runner slots into a
`Problem` for the scheduling core (`ciflow.planning.scheduler`), and its answer into a
`DistributedExecutionPlan` (a versioned pydantic model, byte-identical JSON for the same
inputs). Module constraints come from their one description, `Module.constraints`
(ciflow/model/constraints.py), requirements from `RunnerPool.missing`; for a store that limits
the records a job creates (github://), each slot's estimate stays within it
(ciflow/planning/creations.py; see docs/architecture.md, "Planning").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Collection, Sequence

from ..errors import RequirementError, UsageError
from ..model.constraints import Constraints
from ..model.pipeline import Pipeline, Selection
from ..model.spec import spec_digests
from .costs import ModuleCost, Transfer, module_costs, stable
from .creations import budget_for, module_creations, plan_within, refuse_overflow
from .history import History
from .plan import (
    PLAN_SCHEMA_VERSION,
    DistributedExecutionPlan,
    PlanInputs,
    PlannedModule,
    PlannedSlot,
)
from .pools import RunnerPool, load_pools, parse_pool
from .scheduler import Problem, Schedule, Task, plan

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "DistributedExecutionPlan",
    "RunnerPool",
    "Transfer",
    "load_pools",
    "parse_pool",
    "plan_pipeline",
]


def plan_pipeline(
    pipeline: Pipeline,
    pools: Sequence[RunnerPool],
    *,
    selection: Selection | None = None,
    history: History | None = None,
    transfer: Transfer | None = None,
    affinity_tolerance: float = 0.05,
    cached: Collection[str] = (),
) -> DistributedExecutionPlan:
    """Compute the plan; raises `RequirementError` for a module no slot can serve.

    ``cached``: modules the result cache is expected to have (planned at near-zero cost).
    A `UsageError` when the store of ``transfer`` limits the records a job creates and a slot
    cannot stay within it (it names the fewest ``--workers`` that fit).
    """
    if not pools:
        raise UsageError(
            "no runner slots: pass --workers N or --pool, or declare "
            "[[tool.ciflow.runners]] in pyproject.toml"
        )
    selection = selection if selection is not None else pipeline.select()
    history = history if history is not None else History()
    transfer = transfer if transfer is not None else Transfer.for_store("file")
    names = [n for n in selection.names if n not in selection.skipped]
    slot_pool: list[RunnerPool] = [p for p in pools for _ in range(p.count)]
    costs = module_costs(pipeline, names, history, cached)
    tasks, limits = _tasks(pipeline, names, pools, slot_pool, costs, transfer)
    problem = Problem(
        tasks=tuple(tasks),
        slots=len(slot_pool),
        limits=limits,
        affinity_tolerance=affinity_tolerance,
    )
    inputs = PlanInputs(
        pipeline_digest=_digest(pipeline, names),
        modules=costs,
        pools=list(pools),
        transfer=transfer,
        affinity_tolerance=affinity_tolerance,
        specs=spec_digests({n: pipeline.modules[n] for n in names}),
        depends_on={n: [d.name for d in pipeline.modules[n].depends_on] for n in names},
    )
    return _to_plan(_schedule(problem, pipeline, names, transfer, pools), slot_pool, names, inputs)


def _schedule(
    problem: Problem,
    pipeline: Pipeline,
    names: list[str],
    transfer: Transfer,
    pools: Sequence[RunnerPool],
) -> Schedule:
    """The searched schedule; within the store's creation budget per slot, if it has one."""
    budget = budget_for(transfer.store)
    if budget is None:
        return plan(problem)
    loads = [module_creations(pipeline.modules[n]) for n in names]
    tasks = tuple(dataclasses.replace(t, load=w) for t, w in zip(problem.tasks, loads, strict=True))
    problem = dataclasses.replace(problem, tasks=tasks)
    alone = sum(1 for n in names if pipeline.modules[n].constraints.alone)
    schedule = plan_within(problem, budget, alone)
    refuse_overflow(problem, schedule, budget, alone, one_pool=len(pools) == 1)
    return schedule


def _tasks(
    pipeline: Pipeline,
    names: list[str],
    pools: Sequence[RunnerPool],
    slot_pool: list[RunnerPool],
    costs: dict[str, ModuleCost],
    transfer: Transfer,
) -> tuple[list[Task], dict[str, int]]:
    """One scheduling task per module, and the capacities of the counted limits they name."""
    index = {n: i for i, n in enumerate(names)}
    tasks: list[Task] = []
    problems: list[str] = []
    limits: dict[str, int] = {}
    for name in names:
        mod = pipeline.modules[name]
        eligible = frozenset(
            k for k, pool in enumerate(slot_pool) if not pool.missing(mod.requires)
        )
        if not eligible:
            why = "; ".join(
                f"{p.runs_on}: lacks {', '.join(p.missing(mod.requires))}" for p in pools
            )
            problems.append(f"{name!r} ({why})")
        preds = tuple(index[d.name] for d in mod.depends_on if d.name in index)
        exclusive, counted = _resources(mod.constraints)
        limits.update(counted)
        tasks.append(
            Task(
                name=name,
                duration=costs[name].seconds,
                preds=preds,
                transfer=tuple(stable(transfer.cost(costs[names[p]].result_bytes)) for p in preds),
                slots=None if len(eligible) == len(slot_pool) else eligible,
                exclusive=exclusive,
                limits=tuple(counted),
                affinity=mod.affinity,
            )
        )
    if problems:
        raise RequirementError(
            f"no runner can serve {'; '.join(problems)}; add a runner pool that offers it "
            "(--pool or [[tool.ciflow.runners]]) or leave the module out with --skip"
        )
    _alone_excludes_everything(tasks, [pipeline.modules[n].constraints.alone for n in names])
    return tasks, limits


def _resources(constraints: Constraints) -> tuple[tuple[str, ...], dict[str, int]]:
    """A module's resources for the scheduler: exclusive keys (one place), counted limits."""
    exclusive = tuple(r.name for r in constraints.resources if r.places == 1)
    counted = {r.name: r.places for r in constraints.resources if r.places > 1}
    return exclusive, counted


def _alone_excludes_everything(tasks: list[Task], alone: list[bool]) -> None:
    """A run-alone module (``not_in_parallel=True``) overlaps with no other module of the run.

    Each other task gets a key of its own, and the alone task holds all of them (besides the
    `ALONE` resource shared by alone tasks), so alone tasks exclude everything while the others
    stay free.
    """
    if not any(alone):
        return
    own = [f"@{task.name}" for task in tasks]
    every = tuple(own[k] for k in range(len(tasks)) if not alone[k])
    for k, task in enumerate(tasks):
        extra = every if alone[k] else (own[k],)
        tasks[k] = dataclasses.replace(task, exclusive=task.exclusive + extra)


def _digest(pipeline: Pipeline, names: Sequence[str]) -> str:
    """A fingerprint of the planned modules' specs (dependencies, requirements, constraints)."""
    spec = []
    for name in names:
        mod = pipeline.modules[name]
        spec.append(
            [
                name,
                [list(d) for d in mod.depends_on],
                [
                    list(mod.requires.os),
                    list(mod.requires.arch),
                    list(mod.requires.tools),
                    list(mod.requires.tags),
                ],
                mod.alone,
                list(mod.not_in_parallel),
                [mod.parallel_limit.name, mod.parallel_limit.count] if mod.parallel_limit else None,
                mod.affinity,
                mod.cost,
            ]
        )
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _to_plan(
    schedule: Schedule, slot_pool: list[RunnerPool], names: list[str], inputs: PlanInputs
) -> DistributedExecutionPlan:
    """The schedule as a plan: timings rounded for stable JSON, slots with their runners."""
    bound = schedule.lower_bound
    makespan = schedule.makespan
    ratio = makespan / bound if bound > 0 else 1.0
    return DistributedExecutionPlan(
        makespan=stable(makespan),
        lower_bound=stable(bound),
        ratio=stable(ratio) if math.isfinite(ratio) else 1.0,
        algorithm=schedule.algorithm,
        slots=_slots(schedule, slot_pool, names),
        inputs=inputs,
    )


def _slots(schedule: Schedule, slot_pool: list[RunnerPool], names: list[str]) -> list[PlannedSlot]:
    """Per slot its runner's label and capabilities, and its modules in planned order."""
    slots = []
    for k, order in enumerate(schedule.slot_orders(len(slot_pool))):
        pool = slot_pool[k]
        slots.append(
            PlannedSlot(
                slot=k,
                runs_on=pool.runs_on,
                os=pool.os,
                arch=pool.arch,
                tools=None if pool.tools is None else list(pool.tools),
                tags=list(pool.tags),
                modules=[
                    PlannedModule(
                        name=names[i],
                        start=stable(schedule.placements[i].start),
                        finish=stable(schedule.placements[i].finish),
                    )
                    for i in order
                ],
            )
        )
    return slots
