"""Planning: which CI slot runs which module, and when (see docs/architecture.md)."""

from __future__ import annotations

from .history import History
from .planner import (
    DistributedExecutionPlan,
    RunnerPool,
    Transfer,
    load_pools,
    parse_pool,
    plan_pipeline,
)

__all__ = [
    "DistributedExecutionPlan",
    "History",
    "RunnerPool",
    "Transfer",
    "load_pools",
    "parse_pool",
    "plan_pipeline",
]
