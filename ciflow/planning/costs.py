"""What the planner assumes things cost: module durations and moving results between slots.

A module's duration comes from its history (the moving average of past runs), else its
``cost=`` hint, else the median of the modules known so, else `DEFAULT_COST`. A `Transfer`
prices moving a result between runners through the run's store; its numbers come from the
store's profile (`ciflow.stores.registry`).
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from ..errors import UsageError

if TYPE_CHECKING:
    from ..model.pipeline import Pipeline
    from .history import History

__all__ = ["CACHED_COST", "DEFAULT_COST", "ModuleCost", "Transfer", "module_costs", "stable"]

DEFAULT_COST = 1.0  # seconds, when nothing at all is known
CACHED_COST = 0.05  # seconds, for a module the result cache is expected to have


def stable(value: float) -> float:
    """Round for stable JSON: the same inputs must give byte-identical plans."""
    return round(value, 6) + 0.0


class ModuleCost(BaseModel):
    """The duration the planner assumed for a module, and where it came from."""

    model_config = ConfigDict(extra="forbid")

    seconds: float
    source: Literal["history", "hint", "median", "default", "cached"]
    result_bytes: int


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
        """The transfer cost of store kind (URL scheme) ``store``: its profile, unless given."""
        from ..stores.registry import BACKENDS

        backend = BACKENDS.get(store)
        if backend is None:
            known = ", ".join(BACKENDS)
            raise UsageError(f"unknown store kind {store!r}; use one of {known}")
        if latency is not None and not latency >= 0:
            raise UsageError(f"latency must be >= 0 seconds, not {latency}")
        if bandwidth is not None and not bandwidth > 0:
            raise UsageError(f"bandwidth must be > 0 bytes per second, not {bandwidth}")
        return cls(
            store=store,
            latency=backend.profile.latency if latency is None else latency,
            bandwidth=backend.profile.bandwidth if bandwidth is None else bandwidth,
        )

    def cost(self, size: int) -> float:
        """Seconds to move ``size`` bytes to another slot."""
        return self.latency + size / self.bandwidth


def module_costs(
    pipeline: Pipeline, names: Sequence[str], history: History, cached: Collection[str] = ()
) -> dict[str, ModuleCost]:
    """The assumed duration and result size of each named module, and their sources.

    Modules in ``cached`` (expected cache hits) cost `CACHED_COST`: restoring an entry.
    """
    known: dict[str, tuple[float, Literal["history", "hint"]]] = {}
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
        source: Literal["history", "hint", "median", "default", "cached"]
        if name in known:
            seconds, source = known[name]
        elif median is not None:
            seconds, source = median, "median"
        else:
            seconds, source = DEFAULT_COST, "default"
        if name in cached:
            seconds, source = CACHED_COST, "cached"
        costs[name] = ModuleCost(seconds=stable(seconds), source=source, result_bytes=size)
    return costs
