"""Priority rules: the task orders list scheduling starts from.

A rule maps a `TaskGraph` to one priority per task (higher first); `order_by` turns priorities
into a topological order for list scheduling. `RULES` names every rule the search starts from:
each seeds one member of the genetic population, in registry order, and its name labels the
schedules grown from it (`Schedule.algorithm`). `BASE` is the rule that random members and the
branch-and-bound restarts perturb. A new rule is one function here plus one line in `RULES`
(see docs/architecture.md, "Adding a priority rule").
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from .taskgraph import TaskGraph, levels

__all__ = ["BASE", "RULES", "Priority", "order_by", "rank_plus_head", "upward_rank"]

Priority = Callable[[TaskGraph], list[float]]
"""A priority rule: one number per task, the larger the earlier it is scheduled when ready."""


def upward_rank(g: TaskGraph) -> list[float]:
    """Longest path from each task to the end (durations plus mean transfer cost)."""
    share = (g.slots - 1) / g.slots
    rank = [0.0] * g.n
    for i in reversed(g.topo):
        rank[i] = g.dur[i] + max((c * share + rank[s] for s, c in g.succs[i]), default=0.0)
    return rank


def rank_plus_head(g: TaskGraph) -> list[float]:
    """Upward rank plus the longest path before the task (its whole critical path)."""
    rank = upward_rank(g)
    head, _ = levels(g)
    return [rank[i] + head[i] for i in range(g.n)]


RULES: dict[str, Priority] = {
    "heft": upward_rank,
    "rank+head": rank_plus_head,
}

#: the rule random population members and branch-and-bound restarts perturb
BASE = "heft"


def order_by(g: TaskGraph, priority: Sequence[float]) -> list[int]:
    """Topological order taking the ready task with the highest priority (ties: lower index)."""
    indeg = [len(p) for p in g.preds]
    heap = [(-priority[i], i) for i in range(g.n) if indeg[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        for s, _ in g.succs[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(heap, (-priority[s], s))
    return order
