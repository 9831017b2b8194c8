"""The planner's scheduling core: constraints hold, bounds hold, plans are deterministic."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciflow.planning.rules import BASE, RULES
from ciflow.planning.scheduler import (
    Placement,
    Problem,
    Schedule,
    Task,
    heft,
    lower_bound,
    plan,
    round_robin,
    simulate,
    violations,
)
from ciflow.planning.taskgraph import TaskGraph

FAST = {"passes": 40, "nodes": 400}  # small budgets keep property tests quick
quick = settings(max_examples=80, deadline=None, database=None)


@st.composite
def problems(draw: st.DrawFn, *, features: bool = True, max_tasks: int = 10) -> Problem:
    """Random DAGs; with `features`, also transfers, eligibility, keys, limits and affinity."""
    n = draw(st.integers(0, max_tasks))
    slots = draw(st.integers(1, 4))
    durations = st.one_of(st.integers(0, 9).map(float), st.floats(0, 9).map(lambda x: round(x, 2)))
    tasks = []
    for i in range(n):
        preds = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        if not features:
            tasks.append(Task(f"t{i}", draw(durations), preds))
            continue
        tasks.append(
            Task(
                f"t{i}",
                draw(durations),
                preds,
                tuple(float(draw(st.integers(0, 3))) for _ in preds),
                draw(st.none() | st.frozensets(st.integers(0, slots - 1), min_size=1)),
                tuple(sorted(draw(st.sets(st.sampled_from("ab"), max_size=2)))),
                ("x",) if draw(st.booleans()) else (),
                draw(st.sampled_from([None, None, "g", "h"])),
            )
        )
    # renumber, so predecessors are not always the smaller indices
    perm = draw(st.permutations(range(n)))
    renumbered: list[Task | None] = [None] * n
    for i, t in enumerate(tasks):
        renumbered[perm[i]] = Task(t.name, t.duration, tuple(perm[p] for p in t.preds), *_rest(t))
    limits = {"x": draw(st.integers(1, 2))} if features else {}
    return Problem(tuple(t for t in renumbered if t is not None), slots, limits)


def _rest(
    t: Task,
) -> tuple[tuple[float, ...], frozenset[int] | None, tuple[str, ...], tuple[str, ...], str | None]:
    return t.transfer, t.slots, t.exclusive, t.limits, t.affinity


def _chain(*durations: float, slots: int = 2) -> Problem:
    tasks = [Task(f"t{i}", d, (i - 1,) if i else ()) for i, d in enumerate(durations)]
    return Problem(tuple(tasks), slots)


def _independent(*durations: float, slots: int = 2) -> Problem:
    return Problem(tuple(Task(f"t{i}", d) for i, d in enumerate(durations)), slots)


# --------------------------------------------------------------------------- constraints


@quick
@given(problems())
def test_every_algorithm_respects_every_constraint(problem: Problem) -> None:
    bound = lower_bound(problem)
    for schedule in (plan(problem, **FAST), heft(problem), round_robin(problem)):
        assert violations(problem, schedule) == []
        assert schedule.makespan >= bound - 1e-9
        assert schedule.lower_bound == bound
        last = max((p.finish for p in schedule.placements), default=0.0)
        assert schedule.makespan == pytest.approx(last)


@quick
@given(problems())
def test_plan_is_deterministic(problem: Problem) -> None:
    assert plan(problem, **FAST) == plan(problem, **FAST)


@quick
@given(problems(features=False))
def test_plan_is_never_worse_than_heft(problem: Problem) -> None:
    assert plan(problem, **FAST).makespan <= heft(problem).makespan + 1e-9


def test_plan_is_the_same_in_another_process() -> None:
    code = (
        "from ciflow.planning.scheduler import Problem, Task, plan\n"
        "ts = [Task(f't{i}', 1 + i % 4, (i - 1,) if i % 3 else (), "
        "exclusive=('db',) if i % 5 == 0 else (), affinity='grp' if i % 4 == 0 else None) "
        "for i in range(12)]\n"
        "print(plan(Problem(tuple(ts), 3)))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)}
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        out.append(run.stdout)
    assert out[0] == out[1]


CORE = [
    "problem", "taskgraph", "rules", "bounds", "timelines", "list_scheduling", "search",
    "branch_and_bound", "simulate", "scheduler",
]  # fmt: skip


def test_the_scheduling_core_imports_only_the_standard_library_and_itself() -> None:
    folder = Path(__file__).resolve().parents[1] / "ciflow" / "planning"
    allowed = {"bisect", "collections", "dataclasses", "heapq", "math", "random", "__future__"}
    for name in CORE:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found = {alias.name.split(".")[0] for alias in node.names}
                assert found <= allowed, (name, found)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: only other core modules
                    assert node.level == 1 and node.module in CORE, (name, node.module)
                else:
                    assert node.module is not None
                    assert node.module.split(".")[0] in allowed, (name, node.module)


def test_every_priority_rule_gives_one_number_per_task() -> None:
    problem = Problem(tuple(Task(f"t{i}", 1 + i % 3, (i - 1,) if i else ()) for i in range(5)), 2)
    for name, rule in RULES.items():
        priority = rule(TaskGraph(problem))
        assert len(priority) == 5, name
    assert BASE in RULES
    assert list(RULES)[:2] == ["heft", "rank+head"]


def test_a_registered_rule_seeds_the_search(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def last_first(g: TaskGraph) -> list[float]:
        calls.append(g.n)
        return [float(i) for i in range(g.n)]

    monkeypatch.setitem(RULES, "last-first", last_first)
    # three tasks of 2 on two slots: the bound (3) is out of reach, so every rule is tried
    problem = Problem(tuple(Task(f"t{i}", 2) for i in range(3)), 2)
    schedule = plan(problem, passes=10, nodes=0)
    assert calls == [3]
    assert schedule.makespan == 4 and not violations(problem, schedule)


def test_exclusive_keys_hold_across_slots() -> None:
    tasks = tuple(Task(f"m{i}", 5, exclusive=("db",)) for i in range(3)) + (Task("free", 5),)
    schedule = plan(Problem(tasks, 4))
    spans = sorted((p.start, p.finish) for p in schedule.placements[:3])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert schedule.makespan == 15


def test_counted_limit_caps_parallelism() -> None:
    tasks = tuple(Task(f"m{i}", 4, limits=("gpu",)) for i in range(4))
    schedule = plan(Problem(tasks, 4, limits={"gpu": 2}))
    assert violations(Problem(tasks, 4, limits={"gpu": 2}), schedule) == []
    assert schedule.makespan == 8


def test_transfer_cost_is_paid_only_across_slots() -> None:
    # a -> b, a -> c: running both successors at once needs a transfer of 5 for one of them
    tasks = (Task("a", 1), Task("b", 3, (0,), (5.0,)), Task("c", 3, (0,), (5.0,)))
    schedule = plan(Problem(tasks, 2))
    assert schedule.makespan == 7  # all on one slot beats 1 + 5 + 3 across
    assert len({p.slot for p in schedule.placements}) == 1


def test_eligible_slots_are_respected() -> None:
    tasks = (Task("gpu1", 3, slots=frozenset({1})), Task("gpu2", 3, slots=frozenset({1})))
    schedule = plan(Problem(tasks + (Task("cpu", 1),), 3))
    assert [p.slot for p in schedule.placements[:2]] == [1, 1]
    assert schedule.makespan == 6


# --------------------------------------------------------------------------- bounds, optimality


def test_lower_bound_parts() -> None:
    assert lower_bound(_chain(1, 2, 3)) == 6  # critical path
    assert lower_bound(_independent(3, 3, 3, 3)) == 6  # work / slots
    only_zero = tuple(Task(f"z{i}", 4, slots=frozenset({0})) for i in range(3))
    assert lower_bound(Problem(only_zero + (Task("x", 1),), 4)) == 12  # eligible subset
    keyed = tuple(Task(f"k{i}", 2, exclusive=("db",)) for i in range(3))
    assert lower_bound(Problem(keyed, 3)) == 6  # one exclusive key
    fan = (Task("root", 5),) + tuple(Task(f"leaf{i}", 5, (0,)) for i in range(4))
    assert lower_bound(Problem(fan, 2)) == 15  # one slot must idle while the root runs


def test_lower_bound_is_not_rounded_for_fractional_durations() -> None:
    assert lower_bound(_independent(1.5, 1.5, 1.5)) == pytest.approx(2.25)


def test_plan_finds_an_optimum_heft_misses() -> None:
    problem = _independent(3, 3, 2, 2, 2)
    assert heft(problem).makespan == 7
    schedule = plan(problem)
    assert schedule.makespan == 6 == schedule.lower_bound


def _brute_force(problem: Problem) -> float:
    """Optimum for identical slots: best serial schedule over all topological orders."""
    tasks, best = problem.tasks, float("inf")
    for order in itertools.permutations(range(len(tasks))):
        seen: set[int] = set()
        if any(not set(tasks[t].preds) <= seen or seen.add(t) for t in order):
            continue
        finish: dict[int, float] = {}
        busy: list[tuple[float, float]] = []
        for t in order:
            d = tasks[t].duration
            at = max((finish[p] for p in tasks[t].preds), default=0.0)
            for x in sorted({at} | {e for _, e in busy if e > at}):
                points = [x] + [s for s, _ in busy if x < s < x + d]
                if all(sum(1 for s, e in busy if s <= p < e) < problem.slots for p in points):
                    break
            finish[t] = x + d
            if d > 0:
                busy.append((x, x + d))
        best = min(best, max(finish.values(), default=0.0))
    return best


@settings(max_examples=40, deadline=None, database=None)
@given(problems(features=False, max_tasks=6))
def test_branch_and_bound_reaches_the_optimum(problem: Problem) -> None:
    optimum = _brute_force(problem)
    assert plan(problem, passes=1, nodes=10**6).makespan == pytest.approx(optimum)


# --------------------------------------------------------------------------- affinity


def test_affinity_keeps_a_group_together_when_it_is_free() -> None:
    tasks = (Task("x", 10, affinity="g"), Task("y", 1, affinity="g"), Task("z", 10))
    schedule = plan(Problem(tasks, 2))
    assert schedule.placements[0].slot == schedule.placements[1].slot
    assert schedule.makespan == 11


def test_affinity_gives_way_when_it_costs_more_than_the_tolerance() -> None:
    tasks = (Task("x", 10, affinity="g"), Task("y", 10, affinity="g"))
    assert plan(Problem(tasks, 2)).makespan == 10  # together would take 20
    together = plan(Problem(tasks, 2, affinity_tolerance=1.0))
    assert together.makespan == 20
    assert together.placements[0].slot == together.placements[1].slot


# --------------------------------------------------------------------------- simulation


@quick
@given(problems(), st.randoms(use_true_random=False))
def test_simulation_bounds(problem: Problem, rng: object) -> None:
    import random

    assert isinstance(rng, random.Random)
    schedule = plan(problem, **FAST)
    real = [t.duration * rng.uniform(0.5, 2.0) for t in problem.tasks]
    noisy = Problem(
        tuple(
            Task(t.name, d, t.preds, *_rest(t)) for t, d in zip(problem.tasks, real, strict=True)
        ),
        problem.slots,
        problem.limits,
    )
    result = simulate(problem, schedule, real)
    assert result.static >= lower_bound(noisy) - 1e-9
    assert result.stealing >= lower_bound(noisy) - 1e-9


@quick
@given(problems())
def test_static_replay_with_exact_estimates_keeps_the_plan(problem: Problem) -> None:
    plain = Problem(
        tuple(Task(t.name, t.duration, t.preds, t.transfer, t.slots) for t in problem.tasks),
        problem.slots,
    )
    schedule = plan(plain, **FAST)
    result = simulate(plain, schedule, [t.duration for t in plain.tasks])
    assert result.static <= schedule.makespan + 1e-9


def test_stealing_rescues_a_slow_slot() -> None:
    problem = _independent(1, 1, 1, 1)
    schedule = plan(problem)
    first = schedule.slot_orders(2)[0][0]
    real = [10.0 if i == first else 1.0 for i in range(4)]
    result = simulate(problem, schedule, real)
    assert result.static == 11  # the slow slot still owes its second task
    assert result.stealing == 10  # the other slot took it


def test_stealing_respects_eligibility() -> None:
    tasks = (Task("a", 1, slots=frozenset({0})), Task("b", 1, slots=frozenset({0})))
    problem = Problem(tasks + (Task("c", 1, slots=frozenset({1})),), 2)
    result = simulate(problem, plan(problem), [5.0, 5.0, 1.0])
    assert result.stealing == result.static == 10


def test_edge_cost_replaces_transfer_costs() -> None:
    problem = Problem((Task("a", 1), Task("b", 1, (0,))), 2)
    split = Schedule((Placement(0, 0, 1), Placement(1, 1, 2)), 2, 2, "manual", (0, 1))
    assert simulate(problem, split, [1.0, 1.0]).static == 2
    assert simulate(problem, split, [1.0, 1.0], edge_cost=3).static == 5


def test_zero_length_tasks_replay_in_dependency_order() -> None:
    tasks = (Task("late", 0, (1,)), Task("early", 0), Task("work", 2, (0,)))
    problem = Problem(tasks, 1)
    schedule = plan(problem)
    assert violations(problem, schedule) == []
    assert schedule.slot_orders(1) == [[1, 0, 2]]
    assert simulate(problem, schedule, [0.0, 0.0, 2.0]).static == 2


# --------------------------------------------------------------------------- slot capacity


@st.composite
def loaded(draw: st.DrawFn) -> Problem:
    """Random problems whose tasks carry loads, with a slot capacity greedy placement can keep:
    every slot eligible, and room for the largest load once the load is spread evenly."""
    base = draw(problems())
    tasks = tuple(
        dataclasses.replace(t, slots=None, load=draw(st.integers(0, 5))) for t in base.tasks
    )
    total, top = sum(t.load for t in tasks), max((t.load for t in tasks), default=0)
    capacity = -(-total // base.slots) + top + draw(st.integers(0, 2))
    return dataclasses.replace(base, tasks=tasks, slot_capacity=capacity)


@quick
@given(loaded())
def test_every_algorithm_keeps_the_slot_capacity(problem: Problem) -> None:
    for schedule in (plan(problem, **FAST), heft(problem), round_robin(problem)):
        assert violations(problem, schedule) == []


@quick
@given(loaded())
def test_a_capacity_that_cannot_bind_changes_nothing(problem: Problem) -> None:
    free = dataclasses.replace(problem, slot_capacity=None)
    roomy = dataclasses.replace(problem, slot_capacity=sum(t.load for t in problem.tasks))
    assert plan(roomy, **FAST) == plan(free, **FAST)


def _skewed(capacity: int | None) -> Problem:
    """A chain of 10 long tasks and 200 short ones, each of load 3, on 2 slots."""
    chain = [Task(f"c{i}", 60, (i - 1,) if i else (), load=3) for i in range(10)]
    short = [Task(f"s{i}", 1, load=3) for i in range(200)]
    return Problem(tuple(chain + short), 2, slot_capacity=capacity)


def _loads(problem: Problem, schedule: Schedule) -> list[int]:
    used = [0] * problem.slots
    for task, place in zip(problem.tasks, schedule.placements, strict=True):
        used[place.slot] += task.load
    return used


def test_a_full_slot_passes_modules_to_the_others_at_some_cost_in_time() -> None:
    free = plan(_skewed(None))
    assert max(_loads(_skewed(None), free)) == 600  # every short task beside the chain
    capped = _skewed(438)
    schedule = plan(capped)
    assert violations(capped, schedule) == []
    assert max(_loads(capped, schedule)) <= 438
    assert free.makespan == 600 < schedule.makespan <= 1.05 * free.makespan  # measured: 616


def test_affinity_gives_way_to_the_slot_capacity() -> None:
    tasks = [Task(f"t{i}", 1, (i - 1,) if i else (), (1.0,) if i else (), affinity="g", load=2)
             for i in range(6)]  # fmt: skip
    problem = Problem(tuple(tasks), 2, slot_capacity=6)
    free = plan(dataclasses.replace(problem, slot_capacity=None))
    assert {p.slot for p in free.placements} == {0}  # together, as nothing stops it
    for schedule in (plan(problem), heft(problem)):
        assert violations(problem, schedule) == []
        assert _loads(problem, schedule) == [6, 6]


def test_when_nothing_fits_the_load_is_spread_evenly() -> None:
    problem = Problem(tuple(Task(f"t{i}", 1 + i % 3, load=1) for i in range(10)), 2, {}, 0.05, 4)
    schedule = plan(problem)
    assert _loads(problem, schedule) == [5, 5]
    assert sum("above the capacity 4" in v for v in violations(problem, schedule)) == 2


# --------------------------------------------------------------------------- input and checks


def test_violations_names_each_broken_rule() -> None:
    tasks = (
        Task("a", 2, exclusive=("db",), limits=("net",)),
        Task("b", 2, (0,), exclusive=("db",), limits=("net",), slots=frozenset({0})),
    )
    problem = Problem(tasks, 2, limits={"net": 1})
    bad = Schedule((Placement(0, 0, 2), Placement(1, 1, 3)), 3, 4, "manual")
    found = "\n".join(violations(problem, bad))
    for expected in ("not eligible", "before a finishes", "exclusive 'db'", "limit 'net'"):
        assert expected in found
    stacked = Schedule((Placement(0, 0, 2), Placement(0, 1, 3)), 3, 4, "manual")
    assert any("slot 0" in v for v in violations(problem, stacked))


@pytest.mark.parametrize(
    ("tasks", "slots", "message"),
    [
        ((Task("a", 1, (1,)), Task("b", 1, (0,))), 1, "cycle: a -> b -> a"),
        ((Task("a", 1, (5,)),), 1, "bad predecessor"),
        ((Task("a", 1), Task("b", 1, (0,), (1.0, 2.0))), 1, "transfer costs"),
        ((Task("a", 1, slots=frozenset({3})),), 2, "eligible slots"),
        ((Task("a", 1, limits=("gpu",)),), 1, "unknown limit"),
        ((Task("a", -1),), 1, "duration"),
        ((Task("a", 1, load=-1),), 1, "load must be >= 0"),
        ((), 0, "at least one slot"),
    ],
)
def test_bad_problems_are_refused(tasks: tuple[Task, ...], slots: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Problem(tasks, slots)


def test_a_negative_slot_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="slot capacity must be >= 0"):
        Problem((Task("a", 1),), 1, slot_capacity=-1)


def test_empty_problem() -> None:
    problem = Problem((), 3)
    for schedule in (plan(problem), heft(problem), round_robin(problem)):
        assert schedule.makespan == 0 and schedule.placements == ()
    assert simulate(problem, plan(problem), []).static == 0
