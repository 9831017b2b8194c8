"""Store records a slot's worker creates, for stores that allow a job only so many (github://).

GitHub lets one job *create* at most 500 artifacts (deleted ones count too), and every record a
worker writes to ``github://`` is an artifact of its job. `slot_creations` estimates, on the safe
side, how many a slot's worker creates over a run; the planner gives each slot at most the
store's `StoreProfile.creations_per_job` (`plan_within`) and refuses a pipeline that cannot fit
(`refuse_overflow`). See docs/architecture.md, "Planning".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError
from .scheduler import Problem, Schedule, lower_bound, plan

if TYPE_CHECKING:
    from ..model.module import Module
    from ..model.pipeline import Pipeline
    from .plan import DistributedExecutionPlan

__all__ = [
    "Budget",
    "budget_for",
    "creations_line",
    "module_creations",
    "plan_creations",
    "plan_within",
    "refuse_overflow",
    "slot_creations",
    "worker_creations",
]

# Records per run, as laid out in ciflow/distributed/keys.py (planning may not import
# distributed/, which imports the plan): change these with that layout.
REGISTRATION = 1  # workers/<worker>
SLOT_RECORD = 1  # slots/<slot>
DONE = 1  # done/<worker>
CANCEL = 1  # cancel: fail-fast, written at most once per worker
RESULT = 1  # results/<module>
MARKER = 1  # results/<module>@unsuccessful: only for an outcome that is not a success
OUTPUTS = 1  # outputs/<module>/<attempt>: when the module declares outputs
CLAIM = 1  # claims/<module>/<attempt>: a hand-over to an asker, or an explicit claim
QUIET = 1  # quiet/<module>/<attempt>/<worker>: per run-alone module, on every other worker
# leases/<resource>/<place>: one try per place of each not_in_parallel key, parallel_limit
# and the run-alone lease (`Module.constraints`)
#: requests/<module>/<worker> (stealing), claims and results of modules taken over or stolen
RESERVE = 25
#: seconds a worker heartbeats before the plan's clock starts (registration, the plan wait)
STARTUP = 60.0
#: heartbeats cover this many times the planned makespan: runs overrun their estimates
SPAN_MARGIN = 1.5
#: planning rounds: each plans again with the heartbeats of the last round's makespan
ROUNDS = 4
#: slot counts `refuse_overflow` tries, from the least that could fit, to name the fewest
TRIES = 6


@dataclass(frozen=True)
class Budget:
    """A store's creation limit per job and the heartbeat interval its workers default to."""

    store: str
    per_job: int
    heartbeat: float


def budget_for(store: str) -> Budget | None:
    """The creation budget of store kind (URL scheme) ``store``; None when it has no limit."""
    from ..stores.registry import BACKENDS

    backend = BACKENDS.get(store)
    if backend is None or backend.profile.creations_per_job is None:
        return None
    return Budget(store, backend.profile.creations_per_job, backend.profile.heartbeat)


def module_creations(module: Module) -> int:
    """What one module planned on a slot adds to `slot_creations`."""
    outputs = OUTPUTS if module.outputs else 0
    leases = sum(r.places for r in module.constraints.resources)
    return RESULT + MARKER + CLAIM + outputs + leases


def worker_creations(span: float, heartbeat: float, alone: int) -> int:
    """What a slot's worker creates whatever its modules (see `slot_creations`)."""
    beats = 1 + math.ceil((STARTUP + SPAN_MARGIN * span) / heartbeat)
    return REGISTRATION + SLOT_RECORD + DONE + CANCEL + beats + QUIET * alone + RESERVE


def slot_creations(modules: Iterable[Module], *, span: float, heartbeat: float, alone: int) -> int:
    """The records the worker of a slot planned to run ``modules`` creates, on the safe side.

    Per worker: its registration, slot record and deregistration, one cancel record, and
    heartbeats every ``heartbeat`` seconds (the store's default interval) over ``STARTUP`` +
    ``SPAN_MARGIN`` x ``span`` (the planned makespan: a worker lives until the run ends). The
    plan cannot know whether the jobs API will watch the job instead (then no heartbeats are
    written), so it assumes they are. One quiet record per run-alone module of the run
    (``alone``), and a `RESERVE` for steal requests and modules stolen or taken over.
    Per module: its result, an unsuccessful marker (any module may fail or be cancelled), one
    claim (a hand-over), an outputs archive when it declares ``outputs``, and one try per lease
    place it holds (`module_creations`). Retries of a lease held elsewhere are not counted.
    """
    mine = sum(module_creations(m) for m in modules)
    return worker_creations(span, heartbeat, alone) + mine


def plan_creations(pipeline: Pipeline, plan: DistributedExecutionPlan) -> list[int] | None:
    """Each slot's `slot_creations` in ``plan``; None when its store has no creation limit."""
    budget = budget_for(plan.inputs.transfer.store)
    if budget is None:
        return None
    alone = sum(1 for n in plan.inputs.modules if pipeline.modules[n].constraints.alone)
    return [
        slot_creations(
            (pipeline.modules[m.name] for m in s.modules),
            span=plan.makespan,
            heartbeat=budget.heartbeat,
            alone=alone,
        )
        for s in plan.slots
    ]


def creations_line(pipeline: Pipeline, plan: DistributedExecutionPlan) -> str | None:
    """``artifact creations per slot: max 143 of 500`` for a store with a limit, else None."""
    budget = budget_for(plan.inputs.transfer.store)
    needs = plan_creations(pipeline, plan)
    if budget is None or needs is None:
        return None
    top = max(needs, default=0)
    return (
        f"artifact creations per slot: max {top} of {budget.per_job} ({budget.store}://, estimated)"
    )


def _needs(problem: Problem, schedule: Schedule, budget: Budget, alone: int) -> list[int]:
    """Each slot's estimate in ``schedule``: its tasks' loads plus the worker's own records."""
    fixed = worker_creations(schedule.makespan, budget.heartbeat, alone)
    needs = [fixed] * problem.slots
    for task, place in zip(problem.tasks, schedule.placements, strict=True):
        needs[place.slot] += task.load
    return needs


def plan_within(problem: Problem, budget: Budget, alone: int) -> Schedule:
    """The searched schedule with no slot's estimate above the budget, when one is found.

    ``problem``'s task loads are `module_creations`. A slot's room for them is the budget less
    the worker's own records, whose heartbeats depend on the makespan: planned first with
    those of the lower bound, then again with those of the makespan found, while it grows.
    The last schedule is returned even when a slot still needs too much.
    """
    span = lower_bound(problem)
    for _ in range(ROUNDS):
        room = budget.per_job - worker_creations(span, budget.heartbeat, alone)
        schedule = plan(dataclasses.replace(problem, slot_capacity=max(0, room)))
        if max(_needs(problem, schedule, budget, alone)) <= budget.per_job:
            break
        if schedule.makespan <= span:
            break  # the heartbeats were counted: the modules themselves do not fit
        span = schedule.makespan
    return schedule


def refuse_overflow(
    problem: Problem, schedule: Schedule, budget: Budget, alone: int, *, one_pool: bool
) -> None:
    """Raise `UsageError` when a slot of ``schedule`` needs more than the budget.

    One line: the busiest slot's estimate, the budget, and what to do: the fewest identical
    slots that fit (found by planning them) when every module may run on every slot.
    """
    needs = _needs(problem, schedule, budget, alone)
    worst = max(range(len(needs)), key=needs.__getitem__)
    if needs[worst] <= budget.per_job:
        return
    modules = sum(1 for p in schedule.placements if p.slot == worst)
    head = (
        f"the busiest slot (slot {worst}, {modules} modules) needs about {needs[worst]} "
        f"artifact creations, but {budget.store}:// allows {budget.per_job} per job"
    )
    fewer = "fewer modules (--only, --skip, --category)"
    if any(t.slots is not None for t in problem.tasks):
        raise UsageError(
            f"{head}: add runners that can serve slot {worst}'s modules, or plan {fewer}"
        )
    fewest, tried = _fewest_slots(problem, budget, alone)
    if fewest is None:
        raise UsageError(
            f"{head}, and no plan over up to {tried} slots fits (heartbeats every "
            f"{budget.heartbeat:g}s over the planned run count too): plan {fewer}"
        )
    more = f"--workers {fewest}" if one_pool else f"{fewest} runner slots (raise a --pool count)"
    raise UsageError(f"{head}: plan with {more}, the fewest that fit, or plan {fewer}")


def _fewest_slots(problem: Problem, budget: Budget, alone: int) -> tuple[int | None, int]:
    """The fewest identical slots whose plan fits the budget (None if none tried fits), and
    the most slots tried."""
    loads = [t.load for t in problem.tasks]
    most = max(len(loads), 1)  # more slots than modules cannot help
    # no schedule beats the bound on `most` slots: no slot ever has more room than this
    span = lower_bound(dataclasses.replace(problem, slots=most))
    room = budget.per_job - worker_creations(span, budget.heartbeat, alone)
    if room <= 0 or room < max(loads, default=0):
        return None, most
    least = max(problem.slots + 1, math.ceil(sum(loads) / room))
    last = min(least + TRIES - 1, most)
    for slots in range(least, last + 1):
        wider = dataclasses.replace(problem, slots=slots)
        schedule = plan_within(wider, budget, alone)
        if max(_needs(wider, schedule, budget, alone)) <= budget.per_job:
            return slots, slots
    return None, max(last, problem.slots)
