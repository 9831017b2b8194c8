"""Planning: which CI slot runs which module, and when (see docs/architecture.md).

The scheduling core (``scheduler`` and the modules it re-exports) is pure: plain data in and
out, no pipeline, no pydantic, no I/O. Around it: ``costs`` and ``pools`` (the inputs),
``plan`` (the plan models), ``planner`` (`plan_pipeline`) and ``history``.
"""

from __future__ import annotations

from .costs import ModuleCost, Transfer
from .history import History
from .plan import DistributedExecutionPlan, PlanInputs, PlannedModule, PlannedSlot
from .planner import plan_pipeline
from .pools import RunnerPool, load_pools, parse_pool

__all__ = [
    "DistributedExecutionPlan",
    "History",
    "ModuleCost",
    "PlanInputs",
    "PlannedModule",
    "PlannedSlot",
    "RunnerPool",
    "Transfer",
    "load_pools",
    "parse_pool",
    "plan_pipeline",
]
