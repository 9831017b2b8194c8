"""A `Problem` as index arrays, the form every scheduling pass works on.

`TaskGraph` turns names (keys, limits, affinity groups) into small integers and edges into
(predecessor, transfer cost) lists once per problem; `levels` gives the longest paths before and
after each task, which the lower bound, the priority rules and branch and bound share.
"""

from __future__ import annotations

from .problem import Problem, topological_order

__all__ = ["TaskGraph", "levels"]


class TaskGraph:
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
        self.load = [t.load for t in tasks]
        self.slot_capacity = problem.slot_capacity
        self.topo = topological_order(problem)
        self.pred_ids = [[p for p, _ in ps] for ps in self.preds]
        self.pred_set = [frozenset(p for p, _ in ps) for ps in self.preds]
        self.costly = [any(c for _, c in ps) for ps in self.preds]

    def integral(self) -> bool:
        """Whether all durations and transfer costs are whole numbers (so is the optimum)."""
        return all(d == int(d) for d in self.dur) and all(
            c == int(c) for ps in self.preds for _, c in ps
        )

    def reversed(self) -> TaskGraph:
        """The same problem with every edge pointing the other way (for backward passes)."""
        rev = object.__new__(TaskGraph)
        rev.__dict__.update(self.__dict__)
        rev.preds, rev.succs = self.succs, self.preds
        rev.topo = self.topo[::-1]
        rev.pred_ids = [[p for p, _ in ps] for ps in rev.preds]
        rev.pred_set = [frozenset(p for p, _ in ps) for ps in rev.preds]
        rev.costly = [any(c for _, c in ps) for ps in rev.preds]
        return rev


def levels(g: TaskGraph) -> tuple[list[float], list[float]]:
    """(head, tail): longest path before each task starts / after it ends, ignoring transfers."""
    head = [0.0] * g.n
    tail = [0.0] * g.n
    for i in g.topo:
        head[i] = max((head[p] + g.dur[p] for p, _ in g.preds[i]), default=0.0)
    for i in reversed(g.topo):
        tail[i] = max((tail[s] + g.dur[s] for s, _ in g.succs[i]), default=0.0)
    return head, tail
