"""The JSON run report: missing modules, an exit code that agrees, a span skew cannot inflate."""

from __future__ import annotations

from pathlib import Path

from ciflow.model.outcome import ModuleRecord, Outcome, RunResult
from ciflow.ui.report import SCHEMA_VERSION, build_report, read_report, write_report


def test_a_module_without_an_outcome_is_missing_and_the_exit_code_is_the_commands() -> None:
    result = RunResult(
        "r", [ModuleRecord("a", Outcome.SUCCEEDED, 1, 10.0, 11.0, 1.0), ModuleRecord("b")],
        10.0, 11.0,
    )  # fmt: skip
    report = build_report(result)
    assert report.exit_code == result.exit_code == 3
    assert report.counts == {"succeeded": 1, "missing": 1}
    assert [m.outcome for m in report.modules] == [Outcome.SUCCEEDED, "missing"]


def test_the_report_duration_is_the_skew_proof_span(tmp_path: Path) -> None:
    skew = 5 * 3600.0
    result = RunResult(
        "r",
        [
            ModuleRecord("a", Outcome.SUCCEEDED, 1, 10.0, 12.0, 2.0, worker="w1"),
            ModuleRecord("b", Outcome.SUCCEEDED, 1, 12.0 + skew, 14.0 + skew, 2.0, worker="w2"),
        ],
        10.0,
        14.0 + skew,
    )
    report = build_report(result)
    assert report.duration <= 4.0 and report.wall_span > skew and report.clock_skew
    write_report(report, tmp_path / "report.json")
    again = read_report(tmp_path / "report.json")
    assert again.schema_version == SCHEMA_VERSION == 2 and again == report
