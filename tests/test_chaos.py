"""The chaos suite's fast subset: one fixed case per category (bench/chaos.py runs hundreds)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from ciflow.testing.chaos import CATEGORIES, POISONS, Case, run_case

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("category", CATEGORIES)
def test_a_chaos_case_of_each_category_holds_every_invariant(category: str, tmp_path: Path) -> None:
    verdict = run_case(Case(category, seed=1000 + CATEGORIES.index(category)), root=tmp_path)
    assert verdict.held, "\n".join(verdict.broken)


@pytest.mark.parametrize("poison", [p for p in POISONS if p != "link"])
def test_a_chaos_case_of_each_other_poison_holds_every_invariant(
    poison: str, tmp_path: Path
) -> None:
    # the poison case above (seed 1005) is a `link`; each other kind once
    verdict = run_case(Case("poison", seed=1005, poison=poison), root=tmp_path)
    assert verdict.held, "\n".join(verdict.broken)


def test_the_checks_catch_a_broken_invariant(tmp_path: Path) -> None:
    """The checker is not blind: a ledger double run, a leaked secret and a stray file fail it."""
    import json

    from ciflow.testing.chaos import _Pipeline
    from ciflow.testing.chaos_checks import check

    case = Case("kill", seed=1)
    for name in ("src", "outside", "workspaces", "store"):
        (tmp_path / name).mkdir()
    (tmp_path / "outside" / "target.txt").write_text("x")
    (tmp_path / "stray.txt").write_text("!")
    (tmp_path / "store" / "rec").write_text(case.secret)
    (tmp_path / "ledger.jsonl").write_text(json.dumps(["m0", 1]) + "\n" + json.dumps(["m0", 2]))
    report = {"exit_code": 0, "modules": [{"name": "m0", "outcome": "succeeded", "result": 5}]}
    (tmp_path / "report.json").write_text(json.dumps(report))
    broken = check(case, _Pipeline({"m0": []}, {}), tmp_path, [], [], "", (0, "OK: 1 module(s)"))
    assert any("m0 succeeded with 5, not 1" in b for b in broken), broken
    assert any("m0 ran 2 times" in b for b in broken), broken
    assert any("stray.txt written outside" in b for b in broken), broken
    assert any("secret is in a record of the store" in b for b in broken), broken


def _checked(
    tmp_path: Path, modules: list[dict[str, object]], summary: tuple[int, str]
) -> list[str]:
    import json

    from ciflow.testing.chaos import _Pipeline
    from ciflow.testing.chaos_checks import check

    for name in ("src", "outside", "workspaces", "store"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "outside" / "target.txt").write_text("x")
    # m0 was started by two workers that were both killed (pids 1 and 2)
    (tmp_path / "ledger.jsonl").write_text(json.dumps(["m0", 1]) + "\n" + json.dumps(["m0", 2]))
    report = {"exit_code": summary[0], "modules": modules}
    (tmp_path / "report.json").write_text(json.dumps(report))
    procs = [SimpleNamespace(pid=pid) for pid in (1, 2, 3)]
    pipeline = _Pipeline({"m0": [], "m1": ["m0"], "m2": []}, {})
    return check(Case("kill", seed=1), pipeline, tmp_path, procs, [-9, -9, 0], "", summary)  # type: ignore[arg-type]


def test_the_checks_accept_a_module_failed_for_its_executor_deaths_and_its_dependents(
    tmp_path: Path,
) -> None:
    modules = [
        {"name": "m0", "outcome": "failed", "error": "its worker died while running it 2 times"},
        {"name": "m1", "outcome": "dependency_failed", "error": "dependency m0 failed"},
        {"name": "m2", "outcome": "succeeded", "result": 1},
    ]
    assert _checked(tmp_path, modules, (1, "FAILED: 3 module(s)")) == []


def test_the_checks_refuse_other_failures_and_a_headline_that_disagrees(tmp_path: Path) -> None:
    modules = [
        {"name": "m0", "outcome": "failed", "error": "boom"},
        {"name": "m1", "outcome": "dependency_failed", "error": "dependency m0 failed"},
        {"name": "m2", "outcome": "succeeded", "result": 1},
    ]
    broken = _checked(tmp_path, modules, (1, "OK: 3 module(s)"))
    assert any(b.startswith("m0 ended failed") for b in broken), broken
    assert any(b.startswith("m1 ended dependency_failed") for b in broken), broken
    assert any("headline 'OK: 3 module(s)' disagrees with exit code 1" in b for b in broken), broken
