"""Lower bounds on the makespan: no schedule of the problem can finish earlier.

Used to report plan quality (`Schedule.lower_bound`) and to stop the search once it is met.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from .problem import Problem
from .taskgraph import TaskGraph, levels

__all__ = ["IdleProfile", "bound_of", "lower_bound"]


def lower_bound(problem: Problem) -> float:
    """A makespan no schedule can beat (used to report plan quality and stop search early).

    Maximum of: the critical path (transfers ignored); total work / slots; for every set of
    eligible slots S, the work restricted to subsets of S divided by |S|; the total duration of
    the tasks sharing one exclusive key; and total work plus the idle time that limited
    parallelism forces at the start and end of any schedule, divided by the slot count.
    Rounded up when all durations and transfer costs are whole numbers.
    """
    return bound_of(TaskGraph(problem))


def bound_of(g: TaskGraph) -> float:
    """`lower_bound` of a problem already in index form."""
    if g.n == 0:
        return 0.0
    head, tail = levels(g)
    bound = max(head[i] + g.dur[i] for i in range(g.n))
    for s in sorted(set(g.eligible)):
        work = sum(g.dur[i] for i in range(g.n) if set(g.eligible[i]) <= set(s))
        bound = max(bound, work / len(s))
    key_work = [0.0] * g.n_keys
    for i in range(g.n):
        for key in g.exclusive[i]:
            key_work[key] += g.dur[i]
    bound = max([bound, *key_work])
    if integral := g.integral():
        bound = float(math.ceil(bound - 1e-9))
    work = sum(g.dur)
    start, end = IdleProfile(head, g.dur, g.slots), IdleProfile(tail, g.dur, g.slots)
    for _ in range(100):  # smallest T with work + forced idle(T) <= slots * T
        idle = max(
            start.at_most(a) + end.at_most(bound - a)
            for a in [*start.points, *(bound - x for x in end.points)]
            if 0 <= a <= bound
        )
        need = (work + idle) / g.slots
        if need <= bound + 1e-9:
            break
        bound = float(math.ceil(need - 1e-9)) if integral else need
    return bound


class IdleProfile:
    """Idle time forced within the first `theta` of a schedule: slots * theta minus the most
    work tasks can do there, given each task's earliest start (`level`). Use with the tails
    for the end of the schedule."""

    def __init__(self, level: list[float], dur: list[float], slots: int) -> None:
        self.points = sorted({0.0, *level, *(lv + d for lv, d in zip(level, dur, strict=True))})
        slope_change: dict[float, float] = {}
        for lv, d in zip(level, dur, strict=True):
            if d > 0:
                slope_change[lv] = slope_change.get(lv, 0.0) - 1
                slope_change[lv + d] = slope_change.get(lv + d, 0.0) + 1
        self.values, self.slopes, self.best = [], [], []
        value, slope, best, prev = 0.0, float(slots), 0.0, 0.0
        for x in self.points:
            value += slope * (x - prev)
            slope += slope_change.get(x, 0.0)
            best = max(best, value)
            self.values.append(value)
            self.slopes.append(slope)
            self.best.append(best)
            prev = x

    def at_most(self, theta: float) -> float:
        """Largest forced idle over windows [0, t] with t <= theta."""
        k = bisect_right(self.points, theta) - 1
        if k < 0:
            return 0.0
        here = self.values[k] + self.slopes[k] * (theta - self.points[k])
        return max(self.best[k], here, 0.0)
