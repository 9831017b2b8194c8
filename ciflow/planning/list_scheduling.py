"""List scheduling: place tasks in a given order, each where it finishes earliest.

`list_schedule` is the pass every algorithm repeats (HEFT-style insertion into idle gaps,
earliest finish, ties to the slot left least idle, only slots with room for the task's load);
`heft` and `round_robin` are the one-pass baselines `ciflow.planning.search.plan` is measured
against.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from .bounds import bound_of
from .problem import Placement, Problem, Schedule
from .rules import order_by, upward_rank
from .taskgraph import TaskGraph
from .timelines import Timelines

__all__ = ["Result", "heft", "list_schedule", "overload", "round_robin", "to_schedule"]


@dataclass
class Result:
    """One pass's placements (index arrays), the working form of a `Schedule`."""

    slot: list[int]
    start: list[float]
    finish: list[float]
    makespan: float


def list_schedule(
    g: TaskGraph,
    order: Sequence[int],
    pinned: Sequence[bool] = (),
    fixed_slot: Sequence[int] = (),
    append: bool = False,
) -> Result:
    """Place tasks in `order` (topological): each at its earliest finish over eligible slots.

    `pinned[group]` keeps all tasks of an affinity group on the slot of its first placed task.
    `fixed_slot[task]` (>= 0) forces a slot. `append` disables insertion into idle gaps. With a
    `slot_capacity`, only slots with room for the task's load are candidates (see `_with_room`).
    """
    n = g.n
    slot = [-1] * n
    start = [0.0] * n
    finish = [0.0] * n
    group_slot = [-1] * g.n_groups
    lines = Timelines(g)
    slot_start, slot_end = lines.slot_start, lines.slot_end
    cap, used = g.slot_capacity, [0] * g.slots
    for t in order:
        preds = g.preds[t]
        d = g.dur[t]
        cands: Sequence[int] = g.eligible[t]
        if fixed_slot or pinned:
            cands = _candidates(g, t, pinned, fixed_slot, group_slot)
        if cap is not None:
            forced = bool(fixed_slot) and fixed_slot[t] >= 0
            cands = _with_room(g, t, cands, used, cap, forced)
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
        if cap is not None:
            used[s] += g.load[t]
        if g.group[t] >= 0 and group_slot[g.group[t]] < 0:
            group_slot[g.group[t]] = s
    return Result(slot, start, finish, max(finish, default=0.0))


def _candidates(
    g: TaskGraph, t: int, pinned: Sequence[bool], fixed_slot: Sequence[int], group_slot: list[int]
) -> Sequence[int]:
    """The slots task t may take: its forced slot, its pinned group's slot, or all eligible."""
    if fixed_slot and fixed_slot[t] >= 0:
        return (fixed_slot[t],)
    cands = g.eligible[t]
    grp = g.group[t]
    if pinned and grp >= 0 and pinned[grp] and group_slot[grp] in cands:
        return (group_slot[grp],)
    return cands


def _with_room(
    g: TaskGraph, t: int, cands: Sequence[int], used: list[int], cap: int, forced: bool
) -> Sequence[int]:
    """The candidates with room left for task t's load.

    None has room: any eligible slot with room (an affinity group gives way), unless the slot
    is forced; else the least loaded of them, the one that overflows least.
    """
    need = cap - g.load[t]
    room = [s for s in cands if used[s] <= need]
    if len(room) == len(cands):
        return cands
    if room:
        return room
    pool = cands if forced else g.eligible[t]
    room = [s for s in pool if used[s] <= need]
    return room or (min(pool, key=used.__getitem__),)


def overload(g: TaskGraph, slot: Sequence[int]) -> int:
    """Load placed beyond the slot capacity, summed over the slots (0 without a capacity)."""
    cap = g.slot_capacity
    if cap is None:
        return 0
    used = [0] * g.slots
    for t, s in enumerate(slot):
        used[s] += g.load[t]
    return sum(max(0, u - cap) for u in used)


def to_schedule(g: TaskGraph, r: Result, bound: float, algorithm: str) -> Schedule:
    """The `Schedule` of a pass: placements, and the sequence by start (ties: topological)."""
    places = tuple(Placement(s, a, b) for s, a, b in zip(r.slot, r.start, r.finish, strict=True))
    pos = {t: k for k, t in enumerate(g.topo)}
    sequence = tuple(sorted(range(g.n), key=lambda i: (r.start[i], r.finish[i], pos[i])))
    return Schedule(places, r.makespan, bound, algorithm, sequence)


def round_robin(problem: Problem) -> Schedule:
    """Baseline: tasks in topological order dealt to slots in turn, each appended at the end.

    With a slot capacity, a slot without room for the task's load is passed over.
    """
    g = TaskGraph(problem)
    fixed = [0] * g.n
    turn = 0
    used = [0] * g.slots
    for i in g.topo:
        ring: Sequence[int] = [
            s for s in ((turn + k) % g.slots for k in range(g.slots)) if s in g.eligible[i]
        ]
        if g.slot_capacity is not None:
            ring = _with_room(g, i, ring, used, g.slot_capacity, True)
        fixed[i] = ring[0]
        used[fixed[i]] += g.load[i]
        turn = (fixed[i] + 1) % g.slots
    r = list_schedule(g, g.topo, fixed_slot=fixed, append=True)
    return to_schedule(g, r, bound_of(g), "round-robin")


def heft(problem: Problem) -> Schedule:
    """Baseline: one HEFT pass (upward rank order, insertion into idle gaps, earliest finish)."""
    g = TaskGraph(problem)
    r = list_schedule(g, order_by(g, upward_rank(g)))
    return to_schedule(g, r, bound_of(g), "heft")
