"""The scheduling problem and its answer, as plain data (see docs/architecture.md, "Planning").

A `Problem` is tasks (durations, predecessors, transfer costs, eligible slots, exclusive keys,
counted limits, affinity groups, loads) and a slot count with an optional capacity for the
loads, validated on creation; a `Schedule` is one `Placement` per task. Nothing here
schedules: see `ciflow.planning.scheduler` for that.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Placement", "Problem", "Schedule", "Task", "topological_order"]


@dataclass(frozen=True)
class Task:
    """One unit of work: a module to run on one slot.

    `transfer[k]` is the cost (seconds) of edge `preds[k] -> self`, paid only when both ends run
    on different slots; empty means all zero. `slots` restricts the task to some slot indices
    (capability matching), None means any. Tasks sharing an `exclusive` key never overlap in
    time; `limits` names counted resources (capacities in `Problem.limits`). Tasks with the same
    `affinity` prefer to share one slot. `load` counts against its slot's
    `Problem.slot_capacity` (the store records a module creates: planning/creations.py).
    """

    name: str
    duration: float
    preds: tuple[int, ...] = ()
    transfer: tuple[float, ...] = ()
    slots: frozenset[int] | None = None
    exclusive: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    affinity: str | None = None
    load: int = 0


@dataclass(frozen=True)
class Problem:
    """Tasks (indexed 0..n-1) to place on `slots` identical runners; validated on creation.

    `slot_capacity`: the most task `load` one slot may take (None: no limit). A schedule puts
    more there only when no eligible slot has room left.
    """

    tasks: tuple[Task, ...]
    slots: int
    limits: Mapping[str, int] = field(default_factory=dict)
    affinity_tolerance: float = 0.05
    slot_capacity: int | None = None

    def __post_init__(self) -> None:
        n = len(self.tasks)
        if self.slots < 1:
            raise ValueError(f"need at least one slot, got {self.slots}")
        for i, t in enumerate(self.tasks):
            if not t.duration >= 0 or math.isinf(t.duration):
                raise ValueError(f"task {t.name!r}: duration must be finite and >= 0")
            if t.transfer and len(t.transfer) != len(t.preds):
                raise ValueError(
                    f"task {t.name!r}: {len(t.preds)} preds but {len(t.transfer)} transfer costs"
                )
            if any(not c >= 0 for c in t.transfer):
                raise ValueError(f"task {t.name!r}: transfer costs must be >= 0")
            if any(not 0 <= p < n or p == i for p in t.preds):
                raise ValueError(f"task {t.name!r}: bad predecessor index in {t.preds}")
            if t.slots is not None and (
                not t.slots or any(not 0 <= s < self.slots for s in t.slots)
            ):
                raise ValueError(
                    f"task {t.name!r}: eligible slots {sorted(t.slots)} not a "
                    f"non-empty subset of 0..{self.slots - 1}"
                )
            for name in t.limits:
                if name not in self.limits:
                    raise ValueError(f"task {t.name!r}: unknown limit {name!r}")
            if t.load < 0:
                raise ValueError(f"task {t.name!r}: load must be >= 0, got {t.load}")
        if self.slot_capacity is not None and self.slot_capacity < 0:
            raise ValueError(f"slot capacity must be >= 0, got {self.slot_capacity}")
        for name, cap in self.limits.items():
            if cap < 1:
                raise ValueError(f"limit {name!r}: capacity must be >= 1, got {cap}")
        topological_order(self)  # raises on cycles


@dataclass(frozen=True)
class Placement:
    """Where and when one task runs."""

    slot: int
    start: float
    finish: float


@dataclass(frozen=True)
class Schedule:
    """A plan: one placement per task (same indices as `Problem.tasks`).

    `sequence` lists all tasks by planned start (ties: zero-length first, then in dependency
    order); `slot_orders` splits it per slot, which is the order a runner should follow.
    """

    placements: tuple[Placement, ...]
    makespan: float
    lower_bound: float
    algorithm: str
    sequence: tuple[int, ...] = ()

    def slot_orders(self, slots: int) -> list[list[int]]:
        """Task indices of each slot, in planned start order."""
        orders: list[list[int]] = [[] for _ in range(slots)]
        sequence = self.sequence or sorted(
            range(len(self.placements)),
            key=lambda i: (self.placements[i].start, self.placements[i].finish, i),
        )
        for i in sequence:
            orders[self.placements[i].slot].append(i)
        return orders


def topological_order(problem: Problem) -> list[int]:
    """Kahn's algorithm, smallest index first; raises ValueError naming a cycle."""
    n = len(problem.tasks)
    indeg = [len(set(t.preds)) for t in problem.tasks]
    succs: list[list[int]] = [[] for _ in range(n)]
    for i, t in enumerate(problem.tasks):
        for p in sorted(set(t.preds)):
            succs[p].append(i)
    heap = [i for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for s in succs[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, s)
    if len(order) < n:
        left = {i for i in range(n) if indeg[i] > 0}
        cur = min(left)
        seen: list[int] = []
        while cur not in seen:  # walk back along unfinished preds until a task repeats
            seen.append(cur)
            cur = min(p for p in problem.tasks[cur].preds if p in left)
        cycle = seen[seen.index(cur) :][::-1]  # in dependency order
        first = cycle.index(min(cycle))
        cycle = cycle[first:] + cycle[:first] + [cycle[first]]
        raise ValueError("dependency cycle: " + " -> ".join(problem.tasks[i].name for i in cycle))
    return order
