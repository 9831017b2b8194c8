"""Outcomes and a run's verdict: exit codes, missing modules, a span that skew cannot inflate."""

from __future__ import annotations

import pytest

from ciflow.errors import ExitCode
from ciflow.model.outcome import ModuleRecord, Outcome, RunResult

HOUR = 3600.0


def _run(*records: ModuleRecord, interrupted: bool = False) -> RunResult:
    starts = [r.start for r in records if r.start is not None]
    ends = [r.end for r in records if r.end is not None]
    return RunResult("r", list(records), min(starts, default=0.0), max(ends, default=0.0),
                     interrupted=interrupted)  # fmt: skip


def test_a_run_is_ok_only_when_every_module_has_a_successful_outcome() -> None:
    ok = ModuleRecord("a", Outcome.SUCCEEDED)
    assert _run(ok, ModuleRecord("b", Outcome.SKIPPED)).exit_code == ExitCode.OK
    missing = _run(ok, ModuleRecord("b"))
    assert missing.exit_code == ExitCode.INCOMPLETE == 3
    assert missing.verdict == "FAILED (results missing)"
    assert [r.name for r in missing.missing] == ["b"] and missing.records[1].state == "missing"


def test_the_first_condition_that_applies_gives_the_code() -> None:
    failed = ModuleRecord("f", Outcome.FAILED)
    broken = ModuleRecord("d", Outcome.FAILED, definition_error=True)
    gone = ModuleRecord("g")
    assert _run(failed, gone).exit_code == ExitCode.FAILED
    assert _run(failed, broken, gone).exit_code == ExitCode.USAGE
    assert _run(failed, broken, gone, interrupted=True).exit_code == ExitCode.INTERRUPTED
    assert {_run(r).verdict for r in (failed, broken)} == {"FAILED", "FAILED (pipeline error)"}
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 130]


def _rec(name: str, worker: str, start: float, duration: float) -> ModuleRecord:
    return ModuleRecord(name, Outcome.SUCCEEDED, 1, start, start + duration, duration,
                        worker=worker)  # fmt: skip


def test_the_span_of_workers_whose_clocks_are_hours_apart_is_not_inflated() -> None:
    # a 5 s run: w1 runs a (0-2 s) and c (3-5 s); w2 runs b (2-3 s) but its clock is 48 h ahead
    result = _run(
        _rec("a", "w1", 1000.0, 2.0),
        _rec("b", "w2", 1002.0 + 48 * HOUR, 1.0),
        _rec("c", "w1", 1003.0, 2.0),
    )
    span = result.span
    assert span.wall > 48 * HOUR and span.skewed
    assert 5.0 <= span.seconds <= 6.0  # w1's own window, at most both windows end to end
    behind = _run(_rec("a", "w1", 1000.0, 2.0), _rec("b", "w2", 1002.0 - 5 * HOUR, 1.0))
    assert behind.span.skewed and behind.span.seconds <= 3.0


def test_the_span_of_agreeing_clocks_is_first_start_to_last_end() -> None:
    result = _run(
        _rec("a", "w1", 100.0, 2.0), _rec("b", "w2", 100.5, 3.0), _rec("c", "w1", 103.6, 1.0)
    )
    span = result.span
    assert span.seconds == span.wall == pytest.approx(4.6) and not span.skewed
    local = RunResult("r", [ModuleRecord("a", Outcome.SUCCEEDED, 1, 10.0, 12.0, 2.0)], 9.0, 12.5)
    assert local.span.seconds == 3.5  # one machine, one clock: the run's own start and end
