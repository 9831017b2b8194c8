"""Pure graph helpers on plain dicts: topological order and cycle reporting.

Use them for any dependency graph given as ``{node: [dependency, ...]}``; they know nothing of
modules or running.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from ..errors import CycleError

__all__ = ["find_cycle", "topological_order"]


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Return the nodes so that every node comes after its dependencies.

    Ties keep the mapping's order, so the result is deterministic. Raises `CycleError` naming one
    cycle when there is none; dependencies missing from the mapping are ignored.
    """
    indegree = {node: 0 for node in graph}
    dependents: dict[str, list[str]] = {node: [] for node in graph}
    for node, deps in graph.items():
        for dep in deps:
            if dep in indegree:
                indegree[node] += 1
                dependents[dep].append(node)
    position = {node: i for i, node in enumerate(graph)}
    nodes = list(graph)
    ready = [position[node] for node, count in indegree.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for dependent in dependents[node]:
            indegree[dependent] -= 1
            if indegree[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) != len(graph):
        cycle = find_cycle(graph)
        assert cycle is not None
        raise CycleError(cycle)
    return order


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, ..., a]`` (a depends on b ...), or None if there is none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in graph:
        if state.get(root):
            continue
        path: list[str] = [root]
        iters = [iter(graph[root])]
        state[root] = 1
        while iters:
            dep = next(iters[-1], None)
            if dep is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if dep not in graph or state.get(dep) == 2:
                continue
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            state[dep] = 1
            path.append(dep)
            iters.append(iter(graph[dep]))
    return None
