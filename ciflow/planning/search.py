"""The searched schedule: genetic search over task orders, then branch and bound.

`plan` is the scheduler's entry point. Orders start from the priority rules of
`ciflow.planning.rules` and are mixed by crossover; every order is list scheduled and improved
by forward-backward passes (`Search.justify`). The search is bounded by an evaluation count,
never by time, so the same problem and seed always give the same schedule. With a slot capacity,
a schedule that keeps it beats any that does not, whatever their makespans.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .bounds import bound_of
from .branch_and_bound import MAX_TASKS, RUN_NODES, BranchAndBound
from .list_scheduling import Result, list_schedule, overload, to_schedule
from .problem import Problem, Schedule
from .rules import BASE, RULES, order_by
from .taskgraph import TaskGraph, levels

__all__ = ["Search", "plan"]

_GA_POPULATION = 30
_GA_MUTATION = 0.03


class Search:
    """Bounded, deterministic search over task orders for one problem (see `plan`)."""

    def __init__(
        self, g: TaskGraph, bound: float, pinned: Sequence[bool], budget: int, seed: int
    ) -> None:
        self.g, self.rev = g, g.reversed()
        self.bound, self.pinned, self.budget = bound, pinned, budget
        self.rng = random.Random(seed)
        self.pos = {t: k for k, t in enumerate(g.topo)}
        self.evals = 0
        self.best: Result | None = None
        self.best_by = ""
        self.best_over = 0

    def done(self) -> bool:
        """Whether the pass budget is spent or the lower bound is met (within the capacity)."""
        return self.evals >= self.budget or (
            self.best is not None
            and self.best_over == 0
            and self.best.makespan <= self.bound + 1e-9
        )

    def run(self, order: Sequence[int], graph: TaskGraph | None = None) -> Result:
        """One list-scheduling pass (counted against the budget)."""
        self.evals += 1
        return list_schedule(graph or self.g, order, self.pinned)

    def fitness(self, r: Result) -> tuple[int, float]:
        """What ranks schedules: load beyond the slot capacity first, then the makespan."""
        return overload(self.g, r.slot), r.makespan

    def offer(self, r: Result, by: str) -> None:
        """Keep `r` as the best schedule if it is better, with the name of what found it."""
        over = overload(self.g, r.slot)
        if (
            self.best is None
            or over < self.best_over
            or (over == self.best_over and r.makespan < self.best.makespan - 1e-9)
        ):
            self.best, self.best_by, self.best_over = r, by, over

    def justify(self, r: Result, by: str) -> Result:
        """Forward-backward improvement: re-pack right, then left, while the makespan drops."""
        pos = self.pos
        while not self.done():
            back = self.run(
                sorted(range(self.g.n), key=lambda i: (-r.finish[i], -pos[i])), self.rev
            )
            m = back.makespan
            mirror = Result(back.slot, [m - f for f in back.finish], [m - s for s in back.start], m)
            self.offer(mirror, by + "+fbi")
            fwd = self.run(sorted(range(self.g.n), key=lambda i: (mirror.start[i], pos[i])))
            self.offer(fwd, by + "+fbi")
            if fwd.makespan >= r.makespan - 1e-9:
                return fwd if fwd.makespan <= r.makespan else r
            r = fwd
        return r

    def try_order(self, order: Sequence[int], by: str) -> Result:
        """Schedule `order`, then improve it by forward-backward passes."""
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
    g = TaskGraph(problem)
    bound = bound_of(g)
    if g.n == 0:
        return Schedule((), 0.0, bound, "empty", ())
    width = sum(len(e) for e in g.eligible)  # slot choices per pass
    if passes is None:
        passes = max(20, min(2_000, 400_000 // width))
    if nodes is None:
        nodes = 0 if g.n > MAX_TASKS else min(30_000, 1_500_000 // g.n)
    if g.n_groups == 0:
        return _search(g, bound, [], passes, nodes, seed)
    free = _search(g, bound, [False] * g.n_groups, passes // 2, nodes // 2, seed)
    together = _search(g, bound, [True] * g.n_groups, passes // 2, nodes // 2, seed)
    over = [overload(g, [p.slot for p in s.placements]) for s in (free, together)]
    if over[1] <= over[0] and (
        over[1] < over[0]
        or together.makespan <= free.makespan * (1 + problem.affinity_tolerance) + 1e-9
    ):
        return together
    return free


def _search(
    g: TaskGraph, bound: float, pinned: Sequence[bool], passes: int, nodes: int, seed: int
) -> Schedule:
    """List-scheduling genetic search, then branch-and-bound restarts; the best schedule."""
    s = Search(g, bound, pinned, passes, seed)
    base = RULES[BASE](g)
    _evolve(s, base)
    assert s.best is not None
    if s.best.makespan > bound + 1e-9 and BranchAndBound.applies(g, pinned):
        _branch_and_bound(s, base, nodes)
    return to_schedule(g, s.best, bound, s.best_by)


def _evolve(s: Search, base: list[float]) -> None:
    """Genetic search over task orders (Hartmann's activity-list GA with justification).

    The population starts from the order of each rule in `RULES`, then perturbed `base`
    priorities; children come from two-point order crossover of tournament winners plus a few
    adjacent swaps, and replace the worst member. Every schedule is improved by
    forward-backward passes.
    """
    g, rng, n = s.g, s.rng, s.g.n
    pop: list[tuple[tuple[int, float], list[int]]] = []

    def add(order: list[int], by: str) -> None:
        r = s.try_order(order, by)
        pop.append((s.fitness(r), sorted(range(n), key=lambda i: (r.start[i], s.pos[i]))))

    for name, rule in RULES.items():
        if pop and s.done():
            break
        add(order_by(g, rule(g)), name)
    while len(pop) < _GA_POPULATION and not s.done():
        add(order_by(g, [r * (1 + rng.uniform(-0.4, 0.4)) for r in base]), "random")
    while len(pop) > 1 and not s.done():
        pop.sort(key=lambda m: m[0])
        mother = min(rng.sample(pop, 2))[1]
        father = min(rng.sample(pop, 2))[1]
        child = _crossover(rng, mother, father)
        for k in range(n - 1):
            if rng.random() < _GA_MUTATION and child[k] not in g.pred_set[child[k + 1]]:
                child[k], child[k + 1] = child[k + 1], child[k]
        pop.pop()
        add(child, "genetic")


def _crossover(rng: random.Random, mother: list[int], father: list[int]) -> list[int]:
    """Two-point order crossover: mother's head, father's next tasks, mother's rest."""
    a, b = sorted(rng.sample(range(len(mother) + 1), 2))
    taken = set(mother[:a])
    middle = [t for t in father if t not in taken][: b - a]
    taken.update(middle)
    return mother[:a] + middle + [t for t in mother if t not in taken]


def _branch_and_bound(s: Search, base: list[float], nodes: int) -> None:
    """Branch-and-bound runs (first by `base`, then perturbed) within `nodes` nodes in all."""
    g, bound = s.g, s.bound
    assert s.best is not None
    step = 1.0 if g.integral() else 1e-6 * max(s.best.makespan, 1e-9)
    bnb = BranchAndBound(g, levels(g)[1], bound, step)
    run = 0
    while nodes > 0 and s.best.makespan > bound + 1e-9:
        pri = base if run == 0 else [r * (1 + s.rng.uniform(-0.3, 0.3)) for r in base]
        budget = min(nodes, RUN_NODES)
        found = bnb.solve(order_by(g, pri), s.best.makespan, budget)
        nodes -= budget - bnb.nodes
        run += 1
        if found is not None:
            s.offer(found, "branch-and-bound")
        if bnb.nodes > 0:  # searched to the end: nothing shorter exists
            break
