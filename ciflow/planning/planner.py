"""The distributed execution plan: which CI slot runs which module, and when.

`plan_pipeline` turns a pipeline, its duration history and the declared runner slots into a
scheduling problem for `ciflow.schedule`, and its answer into a `DistributedExecutionPlan`
(a versioned pydantic model, byte-identical JSON for the same inputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import RequirementError, UsageError
from ..model.pipeline import Pipeline, Selection
from ..model.requirements import Capabilities, Requires
from .history import History
from .scheduler import Problem, Schedule, Task, plan

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "TRANSFER_DEFAULTS",
    "DistributedExecutionPlan",
    "RunnerPool",
    "Transfer",
    "load_pools",
    "parse_pool",
    "plan_pipeline",
]

PLAN_SCHEMA_VERSION = 1
DEFAULT_COST = 1.0  # seconds, when nothing at all is known

# Per store kind: (latency per transfer in seconds, bandwidth in bytes per second).
TRANSFER_DEFAULTS: dict[str, tuple[float, float]] = {
    "file": (0.02, 200e6),
    "github": (3.0, 20e6),
    "github-cache": (3.0, 20e6),
    "redis": (0.01, 100e6),
    "http": (0.05, 50e6),
}


def _r(value: float) -> float:
    """Round for stable JSON: the same inputs must give byte-identical plans."""
    return round(value, 6) + 0.0


class RunnerPool(BaseModel):
    """``count`` identical CI runners: their CI label and what they offer.

    ``tools`` None means "not declared": tool requirements are then checked by the worker when
    it starts, not by the planner.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    count: int = 1
    runs_on: str = "ubuntu-latest"
    os: str | None = "linux"
    arch: str | None = None
    tools: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()

    def missing(self, requires: Requires) -> list[str]:
        """What a module's requirements need that this pool does not offer."""
        return requires.missing(self.capabilities)

    @property
    def capabilities(self) -> Capabilities:
        """What the pool declares it offers (what it leaves out is not checked)."""
        return Capabilities.declared(self.os, self.arch, self.tools, self.tags)


class Transfer(BaseModel):
    """What moving a result between slots costs: latency + bytes / bandwidth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: str = "file"
    latency: float
    bandwidth: float

    @classmethod
    def for_store(
        cls, store: str, latency: float | None = None, bandwidth: float | None = None
    ) -> Transfer:
        if store not in TRANSFER_DEFAULTS:
            known = ", ".join(TRANSFER_DEFAULTS)
            raise UsageError(f"unknown store kind {store!r}; use one of {known}")
        lat, bw = TRANSFER_DEFAULTS[store]
        if latency is not None and not latency >= 0:
            raise UsageError(f"latency must be >= 0 seconds, not {latency}")
        if bandwidth is not None and not bandwidth > 0:
            raise UsageError(f"bandwidth must be > 0 bytes per second, not {bandwidth}")
        return cls(
            store=store,
            latency=lat if latency is None else latency,
            bandwidth=bw if bandwidth is None else bandwidth,
        )

    def cost(self, size: int) -> float:
        return self.latency + size / self.bandwidth


class PlannedModule(BaseModel):
    """One module's place in the plan."""

    model_config = ConfigDict(extra="forbid")

    name: str
    start: float
    finish: float


class PlannedSlot(BaseModel):
    """One slot (CI runner): its label, capabilities and modules in the order to run them."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    runs_on: str
    os: str | None
    arch: str | None
    tools: list[str] | None
    tags: list[str]
    modules: list[PlannedModule]


class ModuleCost(BaseModel):
    """The duration the planner assumed for a module, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    seconds: float
    source: Literal["history", "hint", "median", "default"]
    result_bytes: int


class PlanInputs(BaseModel):
    """Everything the plan was computed from (to compare plans and to reproduce them)."""

    model_config = ConfigDict(extra="forbid")

    pipeline_digest: str
    modules: dict[str, ModuleCost]
    pools: list[RunnerPool]
    transfer: Transfer
    affinity_tolerance: float


class DistributedExecutionPlan(BaseModel):
    """Per slot the ordered modules with predicted start/finish; makespan and lower bound."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = PLAN_SCHEMA_VERSION
    makespan: float
    lower_bound: float
    ratio: float
    algorithm: str
    slots: list[PlannedSlot]
    inputs: PlanInputs

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    def matrix(self) -> dict[str, Any]:
        """The GitHub Actions matrix: one entry per slot with its ``runs-on`` label."""
        return {"include": [{"slot": s.slot, "runs-on": s.runs_on} for s in self.slots]}

    def render(self) -> str:
        """The plan as text: per slot the modules with predicted start and finish."""
        lines = [
            f"Plan for {len(self.slots)} slot(s): predicted makespan {_secs(self.makespan)}, "
            f"lower bound {_secs(self.lower_bound)} (ratio {self.ratio:.3f})",
        ]
        for s in self.slots:
            label = s.runs_on + (f", {s.os}" if s.os else "") + (f", {s.arch}" if s.arch else "")
            lines.append(f"  slot {s.slot} ({label}): {len(s.modules)} module(s)")
            for m in s.modules:
                lines.append(f"    {_secs(m.start):>9} -> {_secs(m.finish):>9}  {m.name}")
        sources: dict[str, int] = {}
        for cost in self.inputs.modules.values():
            sources[cost.source] = sources.get(cost.source, 0) + 1
        lines.append(
            "  costs from "
            + ", ".join(f"{k}: {v}" for k, v in sorted(sources.items()))
            + f"; transfer {self.inputs.transfer.store}: {self.inputs.transfer.latency:g}s + "
            f"size / {self.inputs.transfer.bandwidth / 1e6:g} MB/s"
        )
        return "\n".join(lines)

    def gantt(self) -> str:
        """The predicted timeline as a mermaid Gantt chart."""
        from ..ui.diagram import to_gantt

        return to_gantt(
            "ciflow plan",
            [
                (f"slot {s.slot} ({s.runs_on})", [(m.name, m.start, m.finish) for m in s.modules])
                for s in self.slots
            ],
        )

    def slot_of(self, module: str) -> int | None:
        for s in self.slots:
            if any(m.name == module for m in s.modules):
                return s.slot
        return None


def _secs(value: float) -> str:
    return f"{value:.2f}s" if value < 600 else f"{value / 60:.1f}m"


def parse_pool(spec: str) -> RunnerPool:
    """Parse ``--pool "count=3 runs-on=ubuntu-latest os=linux tools=docker,make tags=gpu"``."""
    fields: dict[str, Any] = {}
    for part in spec.split():
        key, sep, value = part.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in RunnerPool.model_fields:
            known = "count, runs-on, os, arch, tools, tags"
            raise UsageError(f"bad --pool item {part!r}; use key=value with keys {known}")
        if key == "count":
            try:
                fields[key] = int(value)
            except ValueError:
                raise UsageError(f"--pool count must be a whole number, not {value!r}") from None
        elif key in ("tools", "tags"):
            fields[key] = tuple(v for v in value.split(",") if v)
        else:
            fields[key] = value or None
    return _pool(fields, "--pool")


def _pool(fields: dict[str, Any], where: str) -> RunnerPool:
    from pydantic import ValidationError

    data = {k.replace("-", "_"): v for k, v in fields.items()}
    try:
        pool = RunnerPool.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}: runner pool {loc}: {first['msg']}") from None
    if pool.count < 1:
        raise UsageError(f"{where}: runner pool count must be >= 1, not {pool.count}")
    return pool


def load_pools(start: Path) -> tuple[list[RunnerPool], Path | None]:
    """Runner pools from ``[[tool.ciflow.runners]]`` of the nearest pyproject.toml above start."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise UsageError(f"cannot read {candidate}: {exc}") from None
            runners = data.get("tool", {}).get("ciflow", {}).get("runners")
            if runners is None:
                return [], candidate
            if not isinstance(runners, list) or not all(isinstance(r, dict) for r in runners):
                raise UsageError(f"{candidate}: [tool.ciflow] runners must be a list of tables")
            where = f"{candidate} [[tool.ciflow.runners]]"
            return [_pool(r, where) for r in runners], candidate
    return [], None


def _costs(pipeline: Pipeline, names: Sequence[str], history: History) -> dict[str, ModuleCost]:
    known: dict[str, tuple[float, str]] = {}
    for name in names:
        past = history.modules.get(name)
        hint = pipeline.modules[name].cost
        if past is not None:
            known[name] = (past.ewma, "history")
        elif hint is not None:
            known[name] = (hint, "hint")
    median = statistics.median(v for v, _ in known.values()) if known else None
    costs = {}
    for name in names:
        past = history.modules.get(name)
        size = past.result_bytes if past is not None else 0
        if name in known:
            seconds, source = known[name]
        elif median is not None:
            seconds, source = median, "median"
        else:
            seconds, source = DEFAULT_COST, "default"
        costs[name] = ModuleCost(seconds=_r(seconds), source=source, result_bytes=size)  # type: ignore[arg-type]
    return costs


def _digest(pipeline: Pipeline, names: Sequence[str]) -> str:
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


def plan_pipeline(
    pipeline: Pipeline,
    pools: Sequence[RunnerPool],
    *,
    selection: Selection | None = None,
    history: History | None = None,
    transfer: Transfer | None = None,
    affinity_tolerance: float = 0.05,
) -> DistributedExecutionPlan:
    """Compute the plan; raises `RequirementError` for a module no slot can serve."""
    if not pools:
        raise UsageError(
            "no runner slots: pass --workers N or --pool, or declare "
            "[[tool.ciflow.runners]] in pyproject.toml"
        )
    selection = selection if selection is not None else pipeline.select()
    history = history if history is not None else History()
    transfer = transfer if transfer is not None else Transfer.for_store("file")
    names = [n for n in selection.names if n not in selection.skipped]
    index = {n: i for i, n in enumerate(names)}
    slot_pool: list[RunnerPool] = [p for p in pools for _ in range(p.count)]
    costs = _costs(pipeline, names, history)

    tasks = []
    problems = []
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
        transfers = tuple(_r(transfer.cost(costs[names[p]].result_bytes)) for p in preds)
        exclusive = tuple(mod.not_in_parallel) + (("@alone",) if mod.alone else ())
        task_limits: tuple[str, ...] = ()
        if mod.parallel_limit is not None:
            limits[mod.parallel_limit.name] = mod.parallel_limit.count
            task_limits = (mod.parallel_limit.name,)
        tasks.append(
            Task(
                name=name,
                duration=costs[name].seconds,
                preds=preds,
                transfer=transfers,
                slots=None if len(eligible) == len(slot_pool) else eligible,
                exclusive=exclusive,
                limits=task_limits,
                affinity=mod.affinity,
            )
        )
    if problems:
        raise RequirementError(
            f"no runner can serve {'; '.join(problems)}; add a runner pool that offers it "
            "(--pool or [[tool.ciflow.runners]]) or leave the module out with --skip"
        )
    _alone_excludes_everything(tasks, pipeline, names)
    problem = Problem(
        tasks=tuple(tasks),
        slots=len(slot_pool),
        limits=limits,
        affinity_tolerance=affinity_tolerance,
    )
    schedule = plan(problem)
    return _to_plan(
        schedule, problem, slot_pool, names, costs, pipeline, pools, transfer, affinity_tolerance
    )


def _alone_excludes_everything(tasks: list[Task], pipeline: Pipeline, names: list[str]) -> None:
    """``not_in_parallel=True``: the module overlaps with no other module of the run.

    Each other task gets a key of its own, and the alone task holds all of them (plus the key
    shared by alone tasks), so alone tasks exclude everything while the others stay free.
    """
    alone = [k for k, n in enumerate(names) if pipeline.modules[n].alone]
    if not alone:
        return
    own = [f"@{task.name}" for task in tasks]
    every = tuple(own[k] for k in range(len(tasks)) if k not in alone)
    for k, task in enumerate(tasks):
        extra = every if k in alone else (own[k],)
        tasks[k] = dataclasses.replace(task, exclusive=task.exclusive + extra)


def _to_plan(
    schedule: Schedule,
    problem: Problem,
    slot_pool: list[RunnerPool],
    names: list[str],
    costs: dict[str, ModuleCost],
    pipeline: Pipeline,
    pools: Sequence[RunnerPool],
    transfer: Transfer,
    affinity_tolerance: float,
) -> DistributedExecutionPlan:
    slots = []
    for k, order in enumerate(schedule.slot_orders(problem.slots)):
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
                        start=_r(schedule.placements[i].start),
                        finish=_r(schedule.placements[i].finish),
                    )
                    for i in order
                ],
            )
        )
    bound = schedule.lower_bound
    makespan = schedule.makespan
    ratio = makespan / bound if bound > 0 else 1.0
    return DistributedExecutionPlan(
        makespan=_r(makespan),
        lower_bound=_r(bound),
        ratio=_r(ratio) if math.isfinite(ratio) else 1.0,
        algorithm=schedule.algorithm,
        slots=slots,
        inputs=PlanInputs(
            pipeline_digest=_digest(pipeline, names),
            modules=costs,
            pools=list(pools),
            transfer=transfer,
            affinity_tolerance=affinity_tolerance,
        ),
    )
