from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ciflow.errors import CycleError
from ciflow.model.graph import find_cycle, topological_order


def test_order_puts_dependencies_first_and_keeps_ties_in_mapping_order() -> None:
    graph = {"test": ["build", "lint"], "lint": [], "build": [], "publish": ["test"]}
    assert topological_order(graph) == ["lint", "build", "test", "publish"]


def test_cycle_message_shows_the_cycle() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": []}
    with pytest.raises(CycleError) as info:
        topological_order(graph)
    cycle = info.value.cycle
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert " -> ".join(cycle) in str(info.value)


def test_self_dependency_is_a_cycle() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_unknown_dependencies_are_ignored() -> None:
    assert topological_order({"a": ["outside"]}) == ["a"]
    assert find_cycle({"a": ["outside"]}) is None


@given(
    st.integers(min_value=1, max_value=30).flatmap(
        lambda n: st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=60
        ).map(lambda edges: (n, edges))
    )
)
def test_order_or_cycle_on_random_graphs(case: tuple[int, list[tuple[int, int]]]) -> None:
    n, edges = case
    graph: dict[str, list[str]] = {f"n{i}": [] for i in range(n)}
    for a, b in edges:
        graph[f"n{a}"].append(f"n{b}")
    cycle = find_cycle(graph)
    if cycle is None:
        order = topological_order(graph)
        position = {node: i for i, node in enumerate(order)}
        assert sorted(order) == sorted(graph)
        for node, deps in graph.items():
            assert all(position[d] < position[node] for d in deps)
    else:
        assert cycle[0] == cycle[-1]
        for node, dep in zip(cycle, cycle[1:], strict=False):
            assert dep in graph[node]
        with pytest.raises(CycleError):
            topological_order(graph)
