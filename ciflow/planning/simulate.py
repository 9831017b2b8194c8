"""Checking and replaying schedules: broken constraints, and runs with real durations.

`violations` lists every constraint a schedule breaks (the tests' oracle); `simulate` replays a
plan with other durations, following it statically and with work stealing, to measure how it
copes with wrong estimates (bench/plan_quality.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .problem import Placement, Problem, Schedule, Task
from .taskgraph import TaskGraph

__all__ = ["SimulationResult", "simulate", "violations"]


@dataclass(frozen=True)
class SimulationResult:
    """Makespans of one simulated run: following the static plan, and plan + work stealing."""

    static: float
    stealing: float


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
    held = [i for i, t in enumerate(tasks) if t.duration > 0]  # instants hold no resource
    for s in range(problem.slots):
        group = [i for i, p in enumerate(places) if p.slot == s]
        out += _clashes(tasks, places, group, f"slot {s}", 1, eps)
        load = sum(tasks[i].load for i in group)
        if problem.slot_capacity is not None and load > problem.slot_capacity:
            out.append(f"slot {s}: load {load} above the capacity {problem.slot_capacity}")
    for key in sorted({k for t in tasks for k in t.exclusive}):
        group = [i for i in held if key in tasks[i].exclusive]
        out += _clashes(tasks, places, group, f"exclusive {key!r}", 1, eps)
    for name, cap in sorted(problem.limits.items()):
        group = [i for i in held if name in tasks[i].limits]
        out += _clashes(tasks, places, group, f"limit {name!r}", cap, eps)
    return out


def _clashes(
    tasks: Sequence[Task],
    places: Sequence[Placement],
    group: list[int],
    what: str,
    cap: int,
    eps: float,
) -> list[str]:
    """Where more than `cap` tasks of `group` run at once (checked at each task's start)."""

    def length(j: int) -> float:
        return places[j].finish - places[j].start

    out: list[str] = []
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
    return out


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
    g = TaskGraph(problem)
    if len(durations) != g.n or any(not d >= 0 for d in durations):
        raise ValueError(f"need {g.n} durations >= 0, got {list(durations)}")
    if edge_cost is not None:
        g.preds = [[(p, float(edge_cost)) for p, _ in ps] for ps in g.preds]
        g.succs = [[(q, float(edge_cost)) for q, _ in qs] for qs in g.succs]
    g.dur = [float(d) for d in durations]
    static = _Replay(g, schedule, steal=False).run()
    return SimulationResult(static, _Replay(g, schedule, steal=True).run())


class _Replay:
    """Event-driven run of a plan's per-slot queues (with or without stealing)."""

    def __init__(self, g: TaskGraph, schedule: Schedule, *, steal: bool) -> None:
        self.g, self.steal = g, steal
        self.queues = queues = schedule.slot_orders(g.slots)
        self.position = {t: k for k, t in enumerate(t for q in queues for t in q)}
        if schedule.sequence:
            self.position = {t: k for k, t in enumerate(schedule.sequence)}
        self.owner = {t: s for s, q in enumerate(queues) for t in q}
        self.slot_of, self.finish = [-1] * g.n, [0.0] * g.n
        self.busy_until = [0.0] * g.slots
        self.started: list[int] = []
        self.running: list[int] = []
        self.now = 0.0

    def run(self) -> float:
        """The makespan of the replay."""
        g, started, finish = self.g, self.started, self.finish
        while len(started) < g.n:
            self.running = [u for u in self.running if finish[u] > self.now]
            self._start_ready()
            now = self.now
            events = [f for f in self.busy_until if f > now] + [
                finish[u] + c for u in started for _, c in g.succs[u] if finish[u] + c > now
            ]
            if not events:
                if len(started) < g.n:
                    raise ValueError(
                        "the plan cannot be replayed: its slot orders wait on each other"
                    )
                break
            self.now = min(events)
        return max(finish, default=0.0)

    def _start_ready(self) -> None:
        """Start everything that can start now, on every free slot."""
        g, started, busy_until = self.g, self.started, self.busy_until
        count = -1
        while count != len(started):  # a zero-length task may free others at once
            count = len(started)
            for s in range(g.slots):
                while busy_until[s] <= self.now and (t := self._pick(s)) is not None:
                    self.queues[self.owner[t]].remove(t)
                    self.slot_of[t], self.finish[t] = s, self.now + g.dur[t]
                    busy_until[s] = self.finish[t]
                    started.append(t)
                    if self.finish[t] > self.now:
                        self.running.append(t)

    def _pick(self, s: int) -> int | None:
        """The task free slot `s` runs next, if any can start now."""
        queues = self.queues
        for t in queues[s] if self.steal else queues[s][:1]:
            if self._can_start(t, s):
                return t
        if self.steal:  # the earliest-planned ready task of a busy slot
            others = [
                t
                for x in range(self.g.slots)
                if x != s and self.busy_until[x] > self.now
                for t in queues[x]
                if s in self.g.eligible[t]
            ]
            for t in sorted(others, key=self.position.__getitem__):
                if self._can_start(t, s):
                    return t
        return None

    def _can_start(self, t: int, s: int) -> bool:
        """Whether task t's inputs have reached slot s and its resources are free."""
        g, slot_of, finish, running = self.g, self.slot_of, self.finish, self.running
        for p, c in g.preds[t]:
            if slot_of[p] < 0 or finish[p] + (c if slot_of[p] != s else 0.0) > self.now:
                return False
        if g.dur[t] <= 0:
            return True
        if any(k in g.exclusive[u] for u in running for k in g.exclusive[t]):
            return False
        return all(
            sum(1 for u in running if lim in g.limits[u]) < g.capacity[lim] for lim in g.limits[t]
        )
