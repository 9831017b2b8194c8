"""Static list scheduling of a task DAG onto CI runner slots (the planner's pure core).

Data in, data out: build a `Problem` (tasks with durations, predecessors and transfer costs,
eligible slots, `not_in_parallel` keys, counted limits, affinity groups), call `plan()` for the
searched schedule, or `heft()` / `round_robin()` for the baselines. `simulate()` replays a plan
with real durations, with and without work stealing. Everything is deterministic: the same
problem always gives the same schedule (search is bounded by an evaluation count, never by time).
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Placement",
    "Problem",
    "Schedule",
    "SimulationResult",
    "Task",
    "heft",
    "lower_bound",
    "plan",
    "round_robin",
    "simulate",
    "violations",
]


@dataclass(frozen=True)
class Task:
    """One unit of work: a module to run on one slot.

    `transfer[k]` is the cost (seconds) of edge `preds[k] -> self`, paid only when both ends run
    on different slots; empty means all zero. `slots` restricts the task to some slot indices
    (capability matching), None means any. Tasks sharing an `exclusive` key never overlap in
    time; `limits` names counted resources (capacities in `Problem.limits`). Tasks with the same
    `affinity` prefer to share one slot.
    """

    name: str
    duration: float
    preds: tuple[int, ...] = ()
    transfer: tuple[float, ...] = ()
    slots: frozenset[int] | None = None
    exclusive: tuple[str, ...] = ()
    limits: tuple[str, ...] = ()
    affinity: str | None = None


@dataclass(frozen=True)
class Problem:
    """Tasks (indexed 0..n-1) to place on `slots` identical runners; validated on creation."""

    tasks: tuple[Task, ...]
    slots: int
    limits: Mapping[str, int] = field(default_factory=dict)
    affinity_tolerance: float = 0.05

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
        for name, cap in self.limits.items():
            if cap < 1:
                raise ValueError(f"limit {name!r}: capacity must be >= 1, got {cap}")
        _topological_order(self)  # raises on cycles


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


@dataclass(frozen=True)
class SimulationResult:
    """Makespans of one simulated run: following the static plan, and plan + work stealing."""

    static: float
    stealing: float


# --------------------------------------------------------------------------- preparation


def _topological_order(problem: Problem) -> list[int]:
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


class _Graph:
    """Index arrays of a Problem used by every scheduling pass; `reversed()` flips the edges."""

    def __init__(self, problem: Problem) -> None:
        tasks = problem.tasks
        self.n = n = len(tasks)
        self.slots = problem.slots
        self.dur = [float(t.duration) for t in tasks]
        self.preds: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        self.succs: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for i, t in enumerate(tasks):
            costs: dict[int, float] = {}
            for k, p in enumerate(t.preds):
                costs[p] = max(costs.get(p, 0.0), float(t.transfer[k]) if t.transfer else 0.0)
            for p in sorted(costs):
                self.preds[i].append((p, costs[p]))
                self.succs[p].append((i, costs[p]))
        everywhere = tuple(range(problem.slots))
        self.eligible = [everywhere if t.slots is None else tuple(sorted(t.slots)) for t in tasks]
        keys = {k: i for i, k in enumerate(sorted({k for t in tasks for k in t.exclusive}))}
        names = {k: i for i, k in enumerate(sorted(problem.limits))}
        self.exclusive = [tuple(sorted({keys[k] for k in t.exclusive})) for t in tasks]
        self.limits = [tuple(sorted({names[k] for k in t.limits})) for t in tasks]
        self.n_keys = len(keys)
        self.capacity = [problem.limits[k] for k in names]
        named = sorted({t.affinity for t in tasks if t.affinity is not None})
        groups = {name: i for i, name in enumerate(named)}
        self.group = [-1 if t.affinity is None else groups[t.affinity] for t in tasks]
        self.n_groups = len(groups)
        self.topo = _topological_order(problem)
        self.pred_ids = [[p for p, _ in ps] for ps in self.preds]
        self.pred_set = [frozenset(p for p, _ in ps) for ps in self.preds]
        self.costly = [any(c for _, c in ps) for ps in self.preds]

    def integral(self) -> bool:
        """Whether all durations and transfer costs are whole numbers (so is the optimum)."""
        return all(d == int(d) for d in self.dur) and all(
            c == int(c) for ps in self.preds for _, c in ps
        )

    def reversed(self) -> _Graph:
        """The same problem with every edge pointing the other way (for backward passes)."""
        rev = object.__new__(_Graph)
        rev.__dict__.update(self.__dict__)
        rev.preds, rev.succs = self.succs, self.preds
        rev.topo = self.topo[::-1]
        rev.pred_ids = [[p for p, _ in ps] for ps in rev.preds]
        rev.pred_set = [frozenset(p for p, _ in ps) for ps in rev.preds]
        rev.costly = [any(c for _, c in ps) for ps in rev.preds]
        return rev


def _upward_rank(g: _Graph) -> list[float]:
    """Longest path from each task to the end (durations plus mean transfer cost)."""
    share = (g.slots - 1) / g.slots
    rank = [0.0] * g.n
    for i in reversed(g.topo):
        rank[i] = g.dur[i] + max((c * share + rank[s] for s, c in g.succs[i]), default=0.0)
    return rank


def _levels(g: _Graph) -> tuple[list[float], list[float]]:
    """(head, tail): longest path before each task starts / after it ends, ignoring transfers."""
    head = [0.0] * g.n
    tail = [0.0] * g.n
    for i in g.topo:
        head[i] = max((head[p] + g.dur[p] for p, _ in g.preds[i]), default=0.0)
    for i in reversed(g.topo):
        tail[i] = max((tail[s] + g.dur[s] for s, _ in g.succs[i]), default=0.0)
    return head, tail


def lower_bound(problem: Problem) -> float:
    """A makespan no schedule can beat (used to report plan quality and stop search early).

    Maximum of: the critical path (transfers ignored); total work / slots; for every set of
    eligible slots S, the work restricted to subsets of S divided by |S|; the total duration of
    the tasks sharing one exclusive key; and total work plus the idle time that limited
    parallelism forces at the start and end of any schedule, divided by the slot count.
    Rounded up when all durations and transfer costs are whole numbers.
    """
    return _lower_bound(_Graph(problem))


def _lower_bound(g: _Graph) -> float:
    if g.n == 0:
        return 0.0
    head, tail = _levels(g)
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
    start, end = _IdleProfile(head, g.dur, g.slots), _IdleProfile(tail, g.dur, g.slots)
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


class _IdleProfile:
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


# --------------------------------------------------------------------------- list scheduling


class _Timelines:
    """Busy intervals of slots, exclusive keys and counted limits during one pass."""

    def __init__(self, g: _Graph) -> None:
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


@dataclass
class _Result:
    slot: list[int]
    start: list[float]
    finish: list[float]
    makespan: float


def _list_schedule(
    g: _Graph,
    order: Sequence[int],
    pinned: Sequence[bool] = (),
    fixed_slot: Sequence[int] = (),
    append: bool = False,
) -> _Result:
    """Place tasks in `order` (topological): each at its earliest finish over eligible slots.

    `pinned[group]` keeps all tasks of an affinity group on the slot of its first placed task.
    `fixed_slot[task]` (>= 0) forces a slot. `append` disables insertion into idle gaps.
    """
    n = g.n
    slot = [-1] * n
    start = [0.0] * n
    finish = [0.0] * n
    group_slot = [-1] * g.n_groups
    lines = _Timelines(g)
    slot_start, slot_end = lines.slot_start, lines.slot_end
    for t in order:
        preds = g.preds[t]
        d = g.dur[t]
        cands: Sequence[int] = g.eligible[t]
        if fixed_slot and fixed_slot[t] >= 0:
            cands = (fixed_slot[t],)
        else:
            grp = g.group[t]
            if pinned and grp >= 0 and pinned[grp] and group_slot[grp] in cands:
                cands = (group_slot[grp],)
        base = max([finish[p] for p in g.pred_ids[t]], default=0.0)
        costly = g.costly[t]
        plain = d > 0 and not append and not g.exclusive[t] and not g.limits[t]
        best_finish, best_idle, best_slot, best_start, best_k = math.inf, math.inf, -1, 0.0, 0
        for s in cands:
            ready = base
            if costly:
                for p, c in preds:
                    if c and slot[p] != s and finish[p] + c > ready:
                        ready = finish[p] + c
            ends = slot_end[s]
            k = bisect_right(ends, ready)
            st, prev = ready, (ends[k - 1] if k else 0.0)
            if plain:  # first fit into the slot's idle gaps, inline
                starts = slot_start[s]
                while k < len(starts) and starts[k] < st + d:
                    st = prev = ends[k]
                    k += 1
            else:
                st = lines.earliest(t, s, ready, append=append)
                k = bisect_right(ends, st)
                prev = ends[k - 1] if k else 0.0
            if st + d < best_finish or (st + d == best_finish and st - prev < best_idle):
                best_finish, best_idle, best_slot, best_start, best_k = st + d, st - prev, s, st, k
        s = best_slot
        if plain:
            slot_start[s].insert(best_k, best_start)
            slot_end[s].insert(best_k, best_finish)
        else:
            lines.add(t, s, best_start)
        slot[t], start[t], finish[t] = s, best_start, best_finish
        if g.group[t] >= 0 and group_slot[g.group[t]] < 0:
            group_slot[g.group[t]] = s
    return _Result(slot, start, finish, max(finish, default=0.0))


def _order_by(g: _Graph, priority: Sequence[float]) -> list[int]:
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


def _to_schedule(g: _Graph, r: _Result, bound: float, algorithm: str) -> Schedule:
    places = tuple(Placement(s, a, b) for s, a, b in zip(r.slot, r.start, r.finish, strict=True))
    pos = {t: k for k, t in enumerate(g.topo)}
    sequence = tuple(sorted(range(g.n), key=lambda i: (r.start[i], r.finish[i], pos[i])))
    return Schedule(places, r.makespan, bound, algorithm, sequence)


def round_robin(problem: Problem) -> Schedule:
    """Baseline: tasks in topological order dealt to slots in turn, each appended at the end."""
    g = _Graph(problem)
    fixed = [0] * g.n
    turn = 0
    for i in g.topo:
        fixed[i] = next(
            s for s in ((turn + k) % g.slots for k in range(g.slots)) if s in g.eligible[i]
        )
        turn = (fixed[i] + 1) % g.slots
    r = _list_schedule(g, g.topo, fixed_slot=fixed, append=True)
    return _to_schedule(g, r, _lower_bound(g), "round-robin")


def heft(problem: Problem) -> Schedule:
    """Baseline: one HEFT pass (upward rank order, insertion into idle gaps, earliest finish)."""
    g = _Graph(problem)
    r = _list_schedule(g, _order_by(g, _upward_rank(g)))
    return _to_schedule(g, r, _lower_bound(g), "heft")


# --------------------------------------------------------------------------- search


class _Search:
    """Bounded, deterministic search over task orders for one problem (see `plan`)."""

    def __init__(
        self, g: _Graph, bound: float, pinned: Sequence[bool], budget: int, seed: int
    ) -> None:
        self.g, self.rev = g, g.reversed()
        self.bound, self.pinned, self.budget = bound, pinned, budget
        self.rng = random.Random(seed)
        self.pos = {t: k for k, t in enumerate(g.topo)}
        self.evals = 0
        self.best: _Result | None = None
        self.best_by = ""

    def done(self) -> bool:
        return self.evals >= self.budget or (
            self.best is not None and self.best.makespan <= self.bound + 1e-9
        )

    def run(self, order: Sequence[int], graph: _Graph | None = None) -> _Result:
        self.evals += 1
        return _list_schedule(graph or self.g, order, self.pinned)

    def offer(self, r: _Result, by: str) -> None:
        if self.best is None or r.makespan < self.best.makespan - 1e-9:
            self.best, self.best_by = r, by

    def justify(self, r: _Result, by: str) -> _Result:
        """Forward-backward improvement: re-pack right, then left, while the makespan drops."""
        pos = self.pos
        while not self.done():
            back = self.run(
                sorted(range(self.g.n), key=lambda i: (-r.finish[i], -pos[i])), self.rev
            )
            m = back.makespan
            mirror = _Result(
                back.slot, [m - f for f in back.finish], [m - s for s in back.start], m
            )
            self.offer(mirror, by + "+fbi")
            fwd = self.run(sorted(range(self.g.n), key=lambda i: (mirror.start[i], pos[i])))
            self.offer(fwd, by + "+fbi")
            if fwd.makespan >= r.makespan - 1e-9:
                return fwd if fwd.makespan <= r.makespan else r
            r = fwd
        return r

    def try_order(self, order: Sequence[int], by: str) -> _Result:
        r = self.run(order)
        self.offer(r, by)
        return self.justify(r, by)


def plan(
    problem: Problem, *, passes: int | None = None, nodes: int | None = None, seed: int = 0
) -> Schedule:
    """Best schedule found by HEFT-style list scheduling plus bounded search; use this one.

    A genetic search over task orders, each schedule improved by forward-backward passes (at
    most `passes` list-scheduling passes), then, for interchangeable slots without transfers or
    resources, depth-first branch and bound restarted with different branching orders (at most
    `nodes` nodes in all). Stops as soon as the makespan meets the lower bound. None scales the
    budget to the problem: 2000 passes and 30000 nodes for 50 tasks on 4 slots, at most about
    half a second on one core (most problems stop far earlier). Affinity groups stay on one
    slot unless that costs more than `problem.affinity_tolerance` of the makespan (that check
    searches twice, each with half the budget). Deterministic: same problem and seed, same plan.
    """
    g = _Graph(problem)
    bound = _lower_bound(g)
    if g.n == 0:
        return Schedule((), 0.0, bound, "empty", ())
    width = sum(len(e) for e in g.eligible)  # slot choices per pass
    if passes is None:
        passes = max(20, min(2_000, 400_000 // width))
    if nodes is None:
        nodes = 0 if g.n > _BNB_MAX_TASKS else min(30_000, 1_500_000 // g.n)
    if g.n_groups == 0:
        return _search(g, bound, [], passes, nodes, seed)
    free = _search(g, bound, [False] * g.n_groups, passes // 2, nodes // 2, seed)
    together = _search(g, bound, [True] * g.n_groups, passes // 2, nodes // 2, seed)
    if together.makespan <= free.makespan * (1 + problem.affinity_tolerance) + 1e-9:
        return together
    return free


_BNB_MAX_TASKS = 200  # recursion: two frames per placed task
_BNB_RUN = 2_000  # nodes per branch-and-bound restart
_GA_POPULATION = 30
_GA_MUTATION = 0.03


def _search(
    g: _Graph, bound: float, pinned: Sequence[bool], passes: int, nodes: int, seed: int
) -> Schedule:
    """List-scheduling genetic search, then branch-and-bound restarts; the best schedule."""
    s = _Search(g, bound, pinned, passes, seed)
    rank = _upward_rank(g)
    head, _ = _levels(g)
    _evolve(s, rank, [rank[i] + head[i] for i in range(g.n)])
    assert s.best is not None
    if s.best.makespan > bound + 1e-9 and _BranchAndBound.applies(g, pinned):
        step = 1.0 if g.integral() else 1e-6 * max(s.best.makespan, 1e-9)
        bnb = _BranchAndBound(g, _levels(g)[1], bound, step)
        run = 0
        while nodes > 0 and s.best.makespan > bound + 1e-9:
            pri = rank if run == 0 else [r * (1 + s.rng.uniform(-0.3, 0.3)) for r in rank]
            budget = min(nodes, _BNB_RUN)
            found = bnb.solve(_order_by(g, pri), s.best.makespan, budget)
            nodes -= budget - bnb.nodes
            run += 1
            if found is not None:
                s.offer(found, "branch-and-bound")
            if bnb.nodes > 0:  # searched to the end: nothing shorter exists
                break
    return _to_schedule(g, s.best, bound, s.best_by)


def _evolve(s: _Search, rank: list[float], rank_head: list[float]) -> None:
    """Genetic search over task orders (Hartmann's activity-list GA with justification).

    The population starts from HEFT's order, rank+head and perturbed ranks; children come from
    two-point order crossover of tournament winners plus a few adjacent swaps, and replace the
    worst member. Every schedule is improved by forward-backward passes.
    """
    g, rng, n = s.g, s.rng, s.g.n
    pop: list[tuple[float, list[int]]] = []

    def add(order: list[int], by: str) -> None:
        r = s.try_order(order, by)
        pop.append((r.makespan, sorted(range(n), key=lambda i: (r.start[i], s.pos[i]))))

    add(_order_by(g, rank), "heft")
    if not s.done():
        add(_order_by(g, rank_head), "rank+head")
    while len(pop) < _GA_POPULATION and not s.done():
        add(_order_by(g, [r * (1 + rng.uniform(-0.4, 0.4)) for r in rank]), "random")
    while len(pop) > 1 and not s.done():
        pop.sort(key=lambda m: m[0])
        mother = min(rng.sample(pop, 2))[1]
        father = min(rng.sample(pop, 2))[1]
        a, b = sorted(rng.sample(range(n + 1), 2))
        taken = set(mother[:a])
        middle = [t for t in father if t not in taken][: b - a]
        taken.update(middle)
        child = mother[:a] + middle + [t for t in mother if t not in taken]
        for k in range(n - 1):
            if rng.random() < _GA_MUTATION and child[k] not in g.pred_set[child[k + 1]]:
                child[k], child[k + 1] = child[k + 1], child[k]
        pop.pop()
        add(child, "genetic")


class _BranchAndBound:
    """Depth-first branch and bound building the schedule forward in time (DF/IHS style).

    Only for interchangeable slots without transfers, resources or pinned groups: there list
    scheduling struggles with tight packings, while elsewhere this rarely beat it. At the
    earliest time t a slot is free, it starts one of the ready tasks (in priority order; tasks
    starting at the same time in priority order only, as slots are alike) or all slots free at
    t wait for the next event. Pruned by the idle-time budget (slots * target - total work,
    less the idle the end of any schedule forces) and the critical path of the ready tasks; a
    state reached again by another interleaving is skipped once fully explored.
    """

    def __init__(self, g: _Graph, tail: list[float], bound: float, step: float) -> None:
        self.g, self.bound, self.step = g, bound, step
        self.end_idle = _IdleProfile(tail, g.dur, g.slots)
        self.span = [d + t for d, t in zip(g.dur, tail, strict=True)]
        self.succ_ids = [[q for q, _ in qs] for qs in g.succs]
        self.explored: set[tuple[object, ...]] = set()  # states that cannot improve
        self.runs = 0

    @staticmethod
    def applies(g: _Graph, pinned: Sequence[bool]) -> bool:
        return (
            not any(g.costly)
            and g.n_keys == 0
            and not g.capacity
            and not any(pinned)
            and all(len(e) == g.slots for e in g.eligible)
            and 0 < g.n <= _BNB_MAX_TASKS
        )

    def solve(self, order: Sequence[int], incumbent: float, nodes: int) -> _Result | None:
        """A schedule shorter than `incumbent` found within `nodes` nodes, else None."""
        g = self.g
        self.runs += 1
        self.prio = [0] * g.n
        for k, t in enumerate(order):
            self.prio[t] = k
        self.best_ms, self.nodes = incumbent, nodes
        self.best: _Result | None = None
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
                self.best = _Result(self.slot[:], self.start[:], self.finish[:], ms)
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


# --------------------------------------------------------------------------- checking


def violations(problem: Problem, schedule: Schedule, eps: float = 1e-9) -> list[str]:
    """Every constraint the schedule breaks, as readable lines (empty when it is valid)."""
    tasks, places = problem.tasks, schedule.placements
    if len(places) != len(tasks):
        return [f"{len(places)} placements for {len(tasks)} tasks"]
    out: list[str] = []
    for t, p in zip(tasks, places, strict=True):
        if not 0 <= p.slot < problem.slots or (t.slots is not None and p.slot not in t.slots):
            out.append(f"{t.name}: slot {p.slot} not eligible")
        if p.start < -eps or abs(p.finish - p.start - t.duration) > eps:
            out.append(f"{t.name}: runs {p.start}..{p.finish}, duration is {t.duration}")
        for k, q in enumerate(t.preds):
            cost = t.transfer[k] if t.transfer and places[q].slot != p.slot else 0.0
            if p.start < places[q].finish + cost - eps:
                out.append(
                    f"{t.name}: starts at {p.start} before {tasks[q].name} "
                    f"finishes at {places[q].finish} (+{cost} transfer)"
                )
    if schedule.makespan < max((p.finish for p in places), default=0.0) - eps:
        out.append(f"makespan {schedule.makespan} is before the last finish")

    def clash(group: list[int], what: str, cap: int = 1) -> None:
        def length(j: int) -> float:
            return places[j].finish - places[j].start

        for i in group:  # who else runs at i's start: a zero-length task may not sit inside
            at = places[i].start
            others = [
                j
                for j in group
                if j != i
                and length(j) > eps
                and (places[j].start <= at + eps if length(i) > eps else places[j].start < at - eps)
                and at + eps < places[j].finish
            ]
            if len(others) + 1 > cap:
                names = ", ".join(tasks[j].name for j in sorted([i, *others]))
                out.append(f"{what}: {names} overlap at {at}")

    held = [i for i, t in enumerate(tasks) if t.duration > 0]  # instants hold no resource
    for s in range(problem.slots):
        clash([i for i, p in enumerate(places) if p.slot == s], f"slot {s}")
    for key in sorted({k for t in tasks for k in t.exclusive}):
        clash([i for i in held if key in tasks[i].exclusive], f"exclusive {key!r}")
    for name, cap in sorted(problem.limits.items()):
        clash([i for i in held if name in tasks[i].limits], f"limit {name!r}", cap)
    return out


# --------------------------------------------------------------------------- simulation


def simulate(
    problem: Problem,
    schedule: Schedule,
    durations: Sequence[float],
    edge_cost: float | None = None,
) -> SimulationResult:
    """Replay a plan with real `durations`, to see how it copes with wrong estimates.

    Static: each slot runs its own tasks in planned order; a task starts once its slot is free,
    its predecessors' results have arrived (finish + transfer when they ran elsewhere) and its
    resources are free. Stealing: an idle slot runs its first ready task in plan order, or else
    takes the earliest-planned ready task of a busy slot that it is eligible for. `edge_cost`
    replaces every edge's transfer cost when given.
    """
    g = _Graph(problem)
    if len(durations) != g.n or any(not d >= 0 for d in durations):
        raise ValueError(f"need {g.n} durations >= 0, got {list(durations)}")
    if edge_cost is not None:
        g.preds = [[(p, float(edge_cost)) for p, _ in ps] for ps in g.preds]
        g.succs = [[(q, float(edge_cost)) for q, _ in qs] for qs in g.succs]
    g.dur = [float(d) for d in durations]
    return SimulationResult(_replay(g, schedule, steal=False), _replay(g, schedule, steal=True))


def _replay(g: _Graph, schedule: Schedule, *, steal: bool) -> float:
    """Event-driven run of the plan's per-slot queues; returns the makespan."""
    queues = schedule.slot_orders(g.slots)
    position = {t: k for k, t in enumerate(t for q in queues for t in q)}
    if schedule.sequence:
        position = {t: k for k, t in enumerate(schedule.sequence)}
    owner = {t: s for s, q in enumerate(queues) for t in q}
    slot_of, finish = [-1] * g.n, [0.0] * g.n
    busy_until = [0.0] * g.slots
    started: list[int] = []
    running: list[int] = []
    now = 0.0

    def can_start(t: int, s: int) -> bool:
        for p, c in g.preds[t]:
            if slot_of[p] < 0 or finish[p] + (c if slot_of[p] != s else 0.0) > now:
                return False
        if g.dur[t] <= 0:
            return True
        if any(k in g.exclusive[u] for u in running for k in g.exclusive[t]):
            return False
        return all(
            sum(1 for u in running if lim in g.limits[u]) < g.capacity[lim] for lim in g.limits[t]
        )

    def pick(s: int) -> int | None:
        for t in queues[s] if steal else queues[s][:1]:
            if can_start(t, s):
                return t
        if steal:  # the earliest-planned ready task of a busy slot
            others = [
                t
                for x in range(g.slots)
                if x != s and busy_until[x] > now
                for t in queues[x]
                if s in g.eligible[t]
            ]
            for t in sorted(others, key=position.__getitem__):
                if can_start(t, s):
                    return t
        return None

    while len(started) < g.n:
        running = [u for u in running if finish[u] > now]
        count = -1
        while count != len(started):  # a zero-length task may free others at once
            count = len(started)
            for s in range(g.slots):
                while busy_until[s] <= now and (t := pick(s)) is not None:
                    queues[owner[t]].remove(t)
                    slot_of[t], finish[t] = s, now + g.dur[t]
                    busy_until[s] = finish[t]
                    started.append(t)
                    if finish[t] > now:
                        running.append(t)
        events = [f for f in busy_until if f > now] + [
            finish[u] + c for u in started for _, c in g.succs[u] if finish[u] + c > now
        ]
        if not events:
            if len(started) < g.n:
                raise ValueError("the plan cannot be replayed: its slot orders wait on each other")
            break
        now = min(events)
    return max(finish, default=0.0)
