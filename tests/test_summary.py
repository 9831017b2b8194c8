from __future__ import annotations

from pathlib import Path

import pytest

from ciflow.execution.masking import MASKER
from ciflow.model.outcome import ModuleRecord, Outcome, RunResult
from ciflow.ui.summary import render_summary, to_markdown, write_step_summary


def _result() -> RunResult:
    return RunResult(
        "r1",
        [
            ModuleRecord("build", Outcome.SUCCEEDED, 1, 100.0, 101.5, 1.5, slot=0),
            ModuleRecord(
                "test", Outcome.FAILED, 2, 101.5, 104.0, 2.5, error="boom | bad\nmore", slot=1
            ),
            ModuleRecord("docs", Outcome.SKIPPED, 0, skip_reason="skip_if: not on CI"),
        ],
        100.0,
        104.0,
    )


def test_text_summary_puts_failures_first_with_reasons_and_errors() -> None:
    text = render_summary(_result())
    rows = [line.split()[0] for line in text.splitlines()[4:7]]
    assert rows == ["test", "build", "docs"]
    assert "slot" in text.splitlines()[2]
    assert "Skipped\n  docs: skip_if: not on CI" in text
    assert "Errors\n  test (failed): boom | bad\n    more" in text
    assert text.rstrip().endswith("FAILED: 3 module(s): 1 succeeded, 1 failed, 1 skipped in 4.00s")


def test_markdown_has_table_and_gantt_of_what_ran_where() -> None:
    md = to_markdown(_result())
    assert md.startswith("### ciflow run r1: failed\n")
    assert "| test | failed | 2.50s | 1 | boom \\| bad |" in md
    assert "| docs | skipped | - | - | skip_if: not on CI |" in md
    gantt = md[md.index("```mermaid") :]
    assert "section slot 0\n    build : 0, 1500" in gantt
    assert "section slot 1\n    test : 1500, 4000" in gantt
    assert "docs" not in gantt  # never ran


def test_markdown_is_masked() -> None:
    MASKER.add("boom")
    assert "boom" not in to_markdown(_result())


def test_step_summary_is_appended_only_on_github(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "summary.md"
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    write_step_summary(_result())
    assert not target.exists()
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    target.write_text("earlier step\n")
    write_step_summary(_result())
    assert target.read_text().startswith("earlier step\n### ciflow run r1")


def test_store_calls_line() -> None:
    from ciflow.ui.summary import store_calls

    github = [
        {"create": 3, "list": 9, "ListArtifacts": 9, "CreateArtifact": 3, "blob-upload": 3},
        {"get": 1, "ListArtifacts": 5, "GetSignedArtifactURL": 1, "blob-download": 1},
    ]
    line = store_calls(github, 4)
    assert line == (
        "API calls by 2 worker(s): 22, 5.5 per module (ListArtifacts 14, CreateArtifact 3, "
        "blob-upload 3, GetSignedArtifactURL 1, blob-download 1)"
    )
    assert store_calls([{"list": 7, "create": 2}], 0) == (
        "store operations by 1 worker(s): 9 (list 7, create 2)"
    )
    assert store_calls([], 3) is None and store_calls([{}], 3) is None


def _unfinished() -> RunResult:
    return RunResult(
        "r2",
        [
            ModuleRecord("build", Outcome.SUCCEEDED, 1, 100.0, 101.0, 1.0, worker="w1", slot=0),
            ModuleRecord("test"),
            ModuleRecord("lint", error="its result record is corrupted: truncated"),
        ],
        100.0,
        101.0,
    )


def test_modules_without_an_outcome_are_missing_and_the_run_is_not_ok() -> None:
    text = render_summary(_unfinished())
    rows = {line.split()[0]: line.split()[1] for line in text.splitlines()[4:7]}
    assert rows == {"build": "succeeded", "test": "missing", "lint": "missing"}
    assert "Errors\n  lint (missing): its result record is corrupted: truncated" in text
    headline = text.rstrip().splitlines()[-1]
    assert headline == "FAILED (results missing): 3 module(s): 1 succeeded, 2 missing in 1.00s"
    assert "OK" not in text
    md = to_markdown(_unfinished())
    assert md.startswith("### ciflow run r2: failed (results missing)\n")
    assert "| test | missing | - | - |  |" in md


def test_a_headline_that_the_command_will_not_keep_is_not_ok() -> None:
    text = render_summary(RunResult("r", [ModuleRecord("a", Outcome.SUCCEEDED)], 0.0, 1.0), "x")
    assert text.rstrip().splitlines()[-1].startswith("FAILED (x): 1 module(s): 1 succeeded")


def test_skewed_worker_clocks_do_not_inflate_the_run_span() -> None:
    hours = 48 * 3600.0
    result = RunResult(
        "r3",
        [
            ModuleRecord("a", Outcome.SUCCEEDED, 1, 1000.0, 1003.0, 3.0, worker="w1", slot=0),
            ModuleRecord(
                "b", Outcome.SUCCEEDED, 1, 1003.0 + hours, 1005.0 + hours, 2.0, worker="w2", slot=1
            ),  # fmt: skip
        ],
        1000.0,
        1005.0 + hours,
    )
    text = render_summary(result)
    assert "OK: 2 module(s): 2 succeeded in 5.00s" in text
    assert "48h00m" in text.splitlines()[-1] and "clocks disagree" in text.splitlines()[-1]
    md = to_markdown(result)
    assert "```mermaid" not in md and "clocks disagree" in md


def test_cache_verdicts_and_the_time_saved_are_in_the_text_and_the_markdown() -> None:
    from ciflow.model.outcome import ModuleRecord, Outcome, RunResult
    from ciflow.ui.summary import render_summary, to_markdown

    records = [
        ModuleRecord("build", Outcome.CACHED, 1, 1.0, 1.1, 0.1, cache="hit", saved=42.0),
        ModuleRecord(
            "test", Outcome.SUCCEEDED, 1, 1.1, 3.0, 1.9, cache="miss: input src/b.txt changed"
        ),  # fmt: skip
        ModuleRecord("report", Outcome.SUCCEEDED, 1, 3.0, 3.1, 0.1),
    ]
    result = RunResult("r", records, 1.0, 3.1)
    text = render_summary(result)
    assert "\nCache\n  build: hit, saved 42.0s\n  test: miss: input src/b.txt changed\n" in text
    assert text.rstrip().endswith("cache: 1 hit(s), 1 miss(es); hits saved 42.0s")
    markdown = to_markdown(result)
    assert "| test | succeeded | 1.90s | - | miss: input src/b.txt changed |" in markdown
    assert "cache: 1 hit(s), 1 miss(es); hits saved 42.0s" in markdown
