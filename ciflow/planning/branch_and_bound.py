"""Depth-first branch and bound for small plain problems, restarted with perturbed orders.

Used by `ciflow.planning.search.plan` after the genetic search when the slots are alike and
there are no transfers, resources, pinned groups or binding slot capacity (see
`BranchAndBound.applies`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .bounds import IdleProfile
from .list_scheduling import Result
from .taskgraph import TaskGraph

__all__ = ["MAX_TASKS", "RUN_NODES", "BranchAndBound"]

MAX_TASKS = 200  # recursion: two frames per placed task
RUN_NODES = 2_000  # nodes per branch-and-bound restart


class BranchAndBound:
    """Depth-first branch and bound building the schedule forward in time (DF/IHS style).

    Only for interchangeable slots without transfers, resources, pinned groups or a binding
    slot capacity (it ignores loads): there list scheduling struggles with tight packings,
    while elsewhere this rarely beat it. At the
    earliest time t a slot is free, it starts one of the ready tasks (in priority order; tasks
    starting at the same time in priority order only, as slots are alike) or all slots free at
    t wait for the next event. Pruned by the idle-time budget (slots * target - total work,
    less the idle the end of any schedule forces) and the critical path of the ready tasks; a
    state reached again by another interleaving is skipped once fully explored.
    """

    def __init__(self, g: TaskGraph, tail: list[float], bound: float, step: float) -> None:
        self.g, self.bound, self.step = g, bound, step
        self.end_idle = IdleProfile(tail, g.dur, g.slots)
        self.span = [d + t for d, t in zip(g.dur, tail, strict=True)]
        self.succ_ids = [[q for q, _ in qs] for qs in g.succs]
        self.explored: set[tuple[object, ...]] = set()  # states that cannot improve
        self.runs = 0

    @staticmethod
    def applies(g: TaskGraph, pinned: Sequence[bool]) -> bool:
        """Whether the problem is one this search is for (see the class docstring)."""
        return (
            not any(g.costly)
            and g.n_keys == 0
            and not g.capacity
            and not any(pinned)
            and all(len(e) == g.slots for e in g.eligible)
            and (g.slot_capacity is None or sum(g.load) <= g.slot_capacity)
            and 0 < g.n <= MAX_TASKS
        )

    def solve(self, order: Sequence[int], incumbent: float, nodes: int) -> Result | None:
        """A schedule shorter than `incumbent` found within `nodes` nodes, else None."""
        g = self.g
        self.runs += 1
        self.prio = [0] * g.n
        for k, t in enumerate(order):
            self.prio[t] = k
        self.best_ms, self.nodes = incumbent, nodes
        self.best: Result | None = None
        self.free = [0.0] * g.slots
        self.left = [len(p) for p in g.preds]
        self.avail = sorted((t for t in range(g.n) if not self.left[t]), key=self.prio.__getitem__)
        self.est = [0.0] * g.n
        self.slot, self.start, self.finish = [-1] * g.n, [0.0] * g.n, [0.0] * g.n
        self.rem = sum(g.dur)
        self.last = (-1.0, -1)  # (time, priority) of the last task started, for symmetry
        self.running = [-1] * g.slots
        self.mask = 0
        self._node()
        return self.best

    def _node(self) -> None:
        """Explore every completion of the current partial schedule (state restored on exit)."""
        self.nodes -= 1
        avail, free, est, span, prio = self.avail, self.free, self.est, self.span, self.prio
        if not avail:
            ms = max(self.finish)
            if ms < self.best_ms - 1e-9:
                self.best_ms = ms
                self.best = Result(self.slot[:], self.start[:], self.finish[:], ms)
            return
        t = min(free)
        low = self.last[1] if self.last[0] == t else -1
        running = [r if f > t else -1 for r, f in zip(self.running, free, strict=True)]
        key = (
            self.mask,
            (self.runs, low) if low >= 0 else (),
            *sorted(zip(free, running, strict=True)),
        )
        if key in self.explored:
            return
        saved = free[:]
        longest = max([span[j] for j in avail])
        reach = max([est[j] + span[j] for j in avail])
        slots, dur = self.g.slots, self.g.dur
        while self.nodes > 0 and self.best_ms > self.bound + 1e-9:
            target = self.best_ms - self.step + 1e-9
            if (
                t + longest > target
                or reach > target
                or sum(free) + self.rem + self.end_idle.at_most(target - max(free)) > slots * target
            ):
                break
            cands = [j for j in avail if est[j] <= t and prio[j] > low]
            s = free.index(t)
            for j in cands:
                if t + span[j] <= target:
                    self._place(j, s, t)
                    if self.nodes <= 0 or self.best_ms <= self.bound + 1e-9:
                        break
            later = [f for f in free if f > t] + [e for j in avail if (e := est[j]) > t]
            if not later or any(t + dur[j] <= min(later) for j in cands):
                break  # nothing to wait for, or waiting is no better than starting j now
            t, low = min(later), -1
            for x in range(slots):
                free[x] = max(free[x], t)
            self.nodes -= 1
        free[:] = saved
        if self.nodes > 0:
            self.explored.add(key)

    def _place(self, j: int, s: int, t: float) -> None:
        """Start task j on slot s at t, explore, and undo."""
        d = self.g.dur[j]
        old_free, old_running = self.free[s], self.running[s]
        old_last, old_avail = self.last, self.avail
        self.slot[j], self.start[j], self.finish[j] = s, t, t + d
        self.free[s], self.last, self.running[s] = t + d, (t, self.prio[j]), j
        self.rem -= d
        self.mask |= 1 << j
        avail = [x for x in old_avail if x != j]
        left, finish = self.left, self.finish
        grown = False
        for q in self.succ_ids[j]:
            left[q] -= 1
            if not left[q]:
                self.est[q] = max([finish[p] for p in self.g.pred_ids[q]])
                avail.append(q)
                grown = True
        if grown:
            avail.sort(key=self.prio.__getitem__)
        self.avail = avail
        self._node()
        for q in self.succ_ids[j]:
            left[q] += 1
        self.free[s], self.running[s] = old_free, old_running
        self.last, self.avail = old_last, old_avail
        self.rem += d
        self.mask &= ~(1 << j)
        self.slot[j] = -1
