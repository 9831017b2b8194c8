"""Busy intervals of slots, exclusive keys and counted limits while one schedule is built."""

from __future__ import annotations

from bisect import bisect_right

from .taskgraph import TaskGraph

__all__ = ["Timelines"]


class Timelines:
    """Busy intervals of slots, exclusive keys and counted limits during one pass."""

    def __init__(self, g: TaskGraph) -> None:
        self.g = g
        self.slot_start: list[list[float]] = [[] for _ in range(g.slots)]
        self.slot_end: list[list[float]] = [[] for _ in range(g.slots)]
        self.key_start: list[list[float]] = [[] for _ in range(g.n_keys)]
        self.key_end: list[list[float]] = [[] for _ in range(g.n_keys)]
        self.limit_busy: list[list[tuple[float, float]]] = [[] for _ in g.capacity]

    @staticmethod
    def _gap(starts: list[float], ends: list[float], t: float, d: float) -> float:
        """Earliest time >= t where [time, time + d) fits between sorted disjoint intervals."""
        k = bisect_right(ends, t)
        while k < len(starts) and starts[k] < t + d:
            t = max(t, ends[k])
            k += 1
        return t

    def _limit_fit(self, lim: int, t: float, d: float) -> float:
        """Earliest time >= t where fewer than `capacity` intervals overlap all of [t, t + d)."""
        cap = self.g.capacity[lim]
        busy = self.limit_busy[lim]
        while True:
            over = [(s, e) for s, e in busy if s < t + d and e > t]
            if len(over) < cap:
                return t
            points = sorted({t} | {s for s, _ in over if s > t})
            blocked = [p for p in points if sum(1 for s, e in over if s <= p < e) >= cap]
            if not blocked:
                return t
            t = min(e for s, e in over if s <= blocked[0] < e)

    def earliest(self, task: int, slot: int, t: float, *, append: bool = False) -> float:
        """Earliest start >= t of `task` on `slot` (into an idle gap unless `append`).

        A zero-length task is an instant on its slot: between two busy intervals, never inside
        one. It holds no exclusive key or limit.
        """
        g = self.g
        d = g.dur[task]
        starts, ends = self.slot_start[slot], self.slot_end[slot]
        if append and ends:
            t = max(t, ends[-1])
        while True:
            t0 = t
            t = self._gap(starts, ends, t, d)
            if d > 0:
                for key in g.exclusive[task]:
                    t = self._gap(self.key_start[key], self.key_end[key], t, d)
                for lim in g.limits[task]:
                    t = self._limit_fit(lim, t, d)
            if t == t0:
                return t

    def add(self, task: int, slot: int, start: float) -> None:
        """Record a placement (a zero-length one only as an instant of its slot)."""
        g = self.g
        end = start + g.dur[task]
        lines = [(self.slot_start[slot], self.slot_end[slot])]
        if end > start:
            lines += [(self.key_start[k], self.key_end[k]) for k in g.exclusive[task]]
            for lim in g.limits[task]:
                self.limit_busy[lim].append((start, end))
        for starts, ends in lines:
            k = bisect_right(ends, start)  # after everything that ends by `start`
            starts.insert(k, start)
            ends.insert(k, end)
