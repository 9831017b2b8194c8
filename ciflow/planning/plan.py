"""The distributed execution plan: which CI slot runs which module, and when.

`DistributedExecutionPlan` is what ``ciflow plan`` writes and workers follow: a versioned
pydantic model whose JSON is byte-identical for the same inputs. `plan_pipeline`
(ciflow.planning.planner) computes it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .costs import ModuleCost, Transfer
from .pools import RunnerPool

__all__ = [
    "PLAN_SCHEMA_VERSION",
    "DistributedExecutionPlan",
    "ModuleCost",
    "PlanInputs",
    "PlannedModule",
    "PlannedSlot",
]

PLAN_SCHEMA_VERSION = 1


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


class PlanInputs(BaseModel):
    """Everything the plan was computed from (to compare plans and to reproduce them)."""

    model_config = ConfigDict(extra="forbid")

    pipeline_digest: str
    modules: dict[str, ModuleCost]
    pools: list[RunnerPool]
    transfer: Transfer
    affinity_tolerance: float
    #: per module `ciflow.model.spec.spec_digest`: a worker refuses a pipeline whose spec changed
    specs: dict[str, str] = Field(default_factory=dict)
    #: per module what it depends on (optional dependencies too): what a re-run must repeat
    depends_on: dict[str, list[str]] = Field(default_factory=dict)


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
    #: the CI run attempt the plan was made in: a worker of a later attempt resumes the run
    attempt: int = Field(default=1, ge=1)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > PLAN_SCHEMA_VERSION:
            raise ValueError(
                f"plan schema version {version} is newer than this ciflow's "
                f"({PLAN_SCHEMA_VERSION}): use the ciflow version that made the plan"
            )
        return version

    def to_json(self) -> str:
        """The plan as indented JSON (byte-identical for the same inputs)."""
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
        hits = [n for n, c in self.inputs.modules.items() if c.source == "cached"]
        if hits:
            lines.append(f"  expected cache hits ({len(hits)}): {', '.join(hits)}")
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
        """The slot the plan gives ``module``, None when it is not in the plan."""
        for s in self.slots:
            if any(m.name == module for m in s.modules):
                return s.slot
        return None


def _secs(value: float) -> str:
    """Seconds for people: ``12.34s``, or minutes from ten minutes on."""
    return f"{value:.2f}s" if value < 600 else f"{value / 60:.1f}m"
