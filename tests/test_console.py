"""`Console`: plain event lines, the live status line, colour, verbosity and masking."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_registered

import ciflow
import ciflow.ui.console
from ciflow.execution.masking import MASKER, Masker
from ciflow.model.outcome import ModuleRecord, Outcome
from ciflow.ui.console import Console, format_duration

CLEAR = "\r\x1b[2K"


def record(
    name: str,
    outcome: Outcome | None,
    *,
    duration: float | None = None,
    error: str | None = None,
    skip_reason: str | None = None,
) -> ModuleRecord:
    rec = ModuleRecord(name, outcome=outcome, error=error, skip_reason=skip_reason)
    if duration is not None:
        rec.start = 1_700_000_000.0
        rec.end = rec.start + duration
        rec.duration = duration
    return rec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ciflow.ui.console, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


# plain mode ----------------------------------------------------------------------------------


def test_plain_lines_for_every_event(out: io.StringIO) -> None:
    console = Console(out, live=False, color=False)
    console.run_started("run-7", 3, 4)
    console.module_started("build", 1)
    console.output("build", "compiling")
    console.module_finished(record("build", Outcome.SUCCEEDED, duration=1.5))
    console.module_started("test", 1)
    console.module_retry("test", 1, 2.345, "CommandFailed: exit 1\nsecond line")
    console.module_started("test", 2)
    console.module_finished(
        record("test", Outcome.FAILED, duration=12.34, error="RuntimeError: boom\ntraceback line")
    )
    console.module_finished(record("docs", Outcome.SKIPPED, skip_reason="skip_if: on CI"))
    console.message("all done")
    assert out.getvalue().splitlines() == [
        "ciflow: run run-7: 3 module(s), up to 4 at a time",
        "[build] started",
        "[build] compiling",
        "[build] succeeded in 1.50s",
        "[test] started",
        "[test] attempt 1 failed (CommandFailed: exit 1); retrying in 2.3s",
        "[test] started (attempt 2)",
        "[test] failed in 12.3s: RuntimeError: boom",
        "[docs] skipped: skip_if: on CI",
        "ciflow: all done",
    ]


@pytest.mark.parametrize(
    ("rec", "line"),
    [
        (
            record("a", Outcome.TIMED_OUT, duration=65, error="timed out after 60s"),
            "[a] timed out in 1m05s: timed out after 60s",
        ),
        (
            record("a", Outcome.DEPENDENCY_FAILED, error="dependency b failed"),
            "[a] dependency failed: dependency b failed",
        ),
        (
            record("a", Outcome.CANCELLED, error="cancelled after b failed"),
            "[a] cancelled: cancelled after b failed",
        ),
        (record("a", None), "[a] cancelled"),
        (record("a", Outcome.CACHED, duration=0.01), "[a] cached in 0.01s"),
        (
            record("a", Outcome.IGNORED_FAILURE, duration=2, error="ValueError: x"),
            "[a] ignored failure in 2.00s: ValueError: x",
        ),
        (record("a", Outcome.SKIPPED), "[a] skipped"),
    ],
)
def test_finished_line_for_each_outcome(out: io.StringIO, rec: ModuleRecord, line: str) -> None:
    Console(out, live=False, color=False).module_finished(rec)
    assert out.getvalue() == line + "\n"


def test_plain_mode_never_draws_a_status_line(out: io.StringIO) -> None:
    console = Console(out, live=False, color=False)
    console.run_started("r", 1, 1)
    console.module_started("a", 1)
    console.tick()
    console.module_finished(record("a", Outcome.SUCCEEDED, duration=0.1))
    console.print("summary")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert "running" not in out.getvalue()


def test_verbose_false_hides_module_output_only(out: io.StringIO) -> None:
    console = Console(out, live=False, color=False, verbose=False)
    console.module_started("a", 1)
    console.output("a", "noise")
    console.module_finished(record("a", Outcome.SUCCEEDED, duration=0.2))
    assert out.getvalue().splitlines() == ["[a] started", "[a] succeeded in 0.20s"]


def test_print_writes_text_as_is(out: io.StringIO) -> None:
    Console(out, live=False).print("line one\n  line two")
    Console(out, live=False).print()
    assert out.getvalue() == "line one\n  line two\n\n"


class FlushCounter(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_plain_lines_are_flushed_by_tick_and_at_the_end() -> None:
    stream = FlushCounter()
    console = Console(stream, live=False, color=False)
    console.output("a", "one")
    console.output("a", "two")
    before = stream.flushes
    console.tick()
    assert stream.flushes > before
    console.output("a", "three")
    before = stream.flushes
    console.run_finished(None)  # type: ignore[arg-type]
    assert stream.flushes > before
    assert stream.getvalue() == "[a] one\n[a] two\n[a] three\n"


# colour --------------------------------------------------------------------------------------


def test_color_marks_the_outcome(out: io.StringIO) -> None:
    console = Console(out, live=False, color=True)
    console.module_finished(record("a", Outcome.SUCCEEDED, duration=1))
    console.module_finished(record("b", Outcome.FAILED, duration=1, error="E"))
    console.module_finished(record("c", Outcome.SKIPPED, skip_reason="why"))
    assert out.getvalue().splitlines() == [
        "[a] \x1b[32msucceeded\x1b[0m in 1.00s",
        "[b] \x1b[31mfailed\x1b[0m in 1.00s: E",
        "[c] \x1b[33mskipped\x1b[0m: why",
    ]


def test_color_off_when_asked(out: io.StringIO) -> None:
    console = Console(out, live=False, color=False)
    for outcome in Outcome:
        console.module_finished(record("m", outcome, duration=1, error="e", skip_reason="r"))
    assert "\x1b" not in out.getvalue()
    assert len(out.getvalue().splitlines()) == len(Outcome)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_defaults_for_a_non_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    console = Console(io.StringIO())
    assert console.live is False and console.color is False


def test_defaults_for_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    console = Console(FakeTTY())
    assert console.live is True and console.color is True
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("NO_COLOR", "1")
    console = Console(FakeTTY())
    assert console.live is False and console.color is False
    assert Console(FakeTTY(), live=True, color=True).color is True


# live mode -----------------------------------------------------------------------------------


def test_live_mode_draws_and_clears_a_status_line(clock: FakeClock) -> None:
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 2, 2)
    clock.now += 1.0
    console.module_started("build", 1)
    text = stream.getvalue()
    # each event line is followed by the status line, without a newline
    assert text.endswith("[build] started\n" + CLEAR + "[0/2 done, 1.00s] running: build")

    console.output("build", "hello")
    text = stream.getvalue()
    assert text.endswith(CLEAR + "[build] hello\n" + CLEAR + "[0/2 done, 1.00s] running: build")

    console.module_finished(record("build", Outcome.SUCCEEDED, duration=1.0))
    assert stream.getvalue().endswith(
        "[build] succeeded in 1.00s\n" + CLEAR + "[1/2 done, 1.00s] running: -"
    )

    console.print("Summary")
    assert stream.getvalue().endswith("running: -" + CLEAR + "Summary\n")

    console.run_finished(None)  # type: ignore[arg-type]
    final = stream.getvalue()
    # the status line never ends up in the final text: every draw is cleared before a line
    visible = re.sub(r"[^\n]*\r\x1b\[2K", "", final)
    assert "running:" not in visible
    assert visible.splitlines() == [
        "ciflow: run r: 2 module(s), up to 2 at a time",
        "[build] started",
        "[build] hello",
        "[build] succeeded in 1.00s",
        "Summary",
    ]


def test_live_status_is_cleared_when_the_run_finishes(clock: FakeClock) -> None:
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 1, 1)
    console.module_started("a", 1)
    console.run_finished(None)  # type: ignore[arg-type]
    assert stream.getvalue().endswith("running: a" + CLEAR)


def test_tick_redraws_at_most_a_few_times_a_second(clock: FakeClock) -> None:
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 3, 2)
    console.module_started("a", 1)
    drawn = stream.getvalue()
    clock.now += 0.1
    console.tick()
    assert stream.getvalue() == drawn  # too soon
    clock.now += 0.4
    console.tick()
    assert stream.getvalue() == drawn + CLEAR + "[0/3 done, 0.50s] running: a"


def test_live_status_lists_running_modules_in_start_order_and_fits_the_width(
    clock: FakeClock,
) -> None:
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 9, 9)
    for n in range(6):
        clock.now += 1
        console.module_started(f"m{n}", 1)
    status = stream.getvalue().rsplit(CLEAR, 1)[-1]
    assert status == "[0/9 done, 6.00s] running: m0, m1, m2, m3 +2"

    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 9, 9)
    for n in range(4):
        console.module_started(f"a_rather_long_module_name_{n}", 1)
    statuses = [chunk.rsplit(CLEAR, 1)[-1] for chunk in stream.getvalue().split("\n")]
    assert all(len(status) <= 79 for status in statuses)  # a StringIO counts as 80 columns
    assert statuses[-1].startswith("[0/9 done, 0.00s] running: a_rather_long_module_name_0, ")
    assert statuses[-1].endswith("…") and len(statuses[-1]) == 79


def test_live_retry_removes_module_from_running(clock: FakeClock) -> None:
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 1, 1)
    console.module_started("flaky", 1)
    console.module_retry("flaky", 1, 0.5, "boom")
    assert stream.getvalue().endswith(
        "[flaky] attempt 1 failed (boom); retrying in 0.5s\n"
        + CLEAR
        + "[0/1 done, 0.00s] running: -"
    )


# masking -------------------------------------------------------------------------------------


def test_every_kind_of_line_is_masked(out: io.StringIO) -> None:
    MASKER.add("s3cr3t-val")
    console = Console(out, live=False, color=True)
    console.run_started("s3cr3t-val", 1, 1)
    console.module_started("m", 1)
    console.output("m", "echo s3cr3t-val")
    console.module_retry("m", 1, 1.0, "failed with s3cr3t-val")
    console.module_finished(record("m", Outcome.FAILED, duration=1, error="bad s3cr3t-val"))
    console.module_finished(record("n", Outcome.SKIPPED, skip_reason="because s3cr3t-val"))
    console.message("s3cr3t-val")
    console.print("table s3cr3t-val")
    text = out.getvalue()
    assert "s3cr3t-val" not in text
    assert text.count("***") == 7


def test_live_status_line_is_masked(clock: FakeClock) -> None:
    MASKER.add("hidden_module")
    stream = io.StringIO()
    console = Console(stream, live=True, color=False)
    console.run_started("r", 1, 1)
    console.module_started("hidden_module", 1)
    console.tick()
    assert "hidden_module" not in stream.getvalue()
    assert stream.getvalue().endswith("running: ***")


def test_console_uses_its_own_masker(out: io.StringIO) -> None:
    masker = Masker()
    masker.add("private-one")
    MASKER.add("global-one")
    console = Console(out, live=False, masker=masker)
    console.output("m", "private-one global-one")
    assert out.getvalue() == "[m] *** global-one\n"


# a real run ----------------------------------------------------------------------------------


def test_plain_lines_of_a_real_run(tmp_path: Path, out: io.StringIO) -> None:
    attempts: list[int] = []

    @ciflow.module(retries=1, retry_delay=0.01)
    def flaky(ctx: ciflow.Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")
        ctx.log("second try works")

    @ciflow.module(
        skip_if=ciflow.env_set("CIFLOW_NEVER_SET_VARIABLE") | ciflow.Condition(bool, "always")
    )
    def skipped(ctx: ciflow.Context) -> None:
        raise AssertionError("must not run")

    @ciflow.module(depends_on=[flaky])
    def after(ctx: ciflow.Context) -> None:
        ctx.run("echo from the shell")

    result = run_registered(tmp_path, out, color=False, jobs=4)
    assert result.exit_code == 0 and attempts == [1, 2]
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"ciflow: run \S+: 3 module\(s\), up to 4 at a time", lines[0])
    expected_in_order = [
        r"\[flaky\] started",
        r"\[flaky\] attempt 1 failed \(RuntimeError: first try fails\); retrying in \d+\.\ds",
        r"\[flaky\] started \(attempt 2\)",
        r"\[flaky\] second try works",
        r"\[flaky\] succeeded in \d+\.\d\ds.*",  # (see test_retried_success_...)
        r"\[after\] started",
        r"\[after\] from the shell",
        r"\[after\] succeeded in \d+\.\d\ds",
    ]
    position = 0
    for pattern in expected_in_order:
        while not re.fullmatch(pattern, lines[position]):
            position += 1
            assert position < len(lines), f"no line matching {pattern!r} in order"
    assert "[skipped] skipped: skip_if: CIFLOW_NEVER_SET_VARIABLE is set or always" in lines


def test_retried_success_line_shows_no_stale_error(tmp_path: Path, out: io.StringIO) -> None:
    """BUG: after a failed attempt and a successful retry, ModuleRecord.error still holds the
    first attempt's error; the console prints "[flaky] succeeded in 0.00s: RuntimeError: first
    try fails" (and the report gives the succeeded module that error)."""

    @ciflow.module(retries=1, retry_delay=0.01)
    def flaky(ctx: ciflow.Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("first try fails")

    result = run_registered(tmp_path, out, color=False, jobs=1)
    assert result.records[0].outcome is Outcome.SUCCEEDED
    finished = [line for line in out.getvalue().splitlines() if " succeeded" in line]
    assert len(finished) == 1
    assert re.fullmatch(r"\[flaky\] succeeded in \d+\.\d\ds", finished[0]), finished[0]
    assert result.records[0].error is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.42, "0.42s"), (12.34, "12.3s"), (245, "4m05s"), (3720, "1h02m"), (0, "0.00s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_github_mode_groups_each_modules_output_and_annotates_failures() -> None:
    from ciflow.model.outcome import ModuleRecord, Outcome
    from ciflow.providers.github import GitHubActions

    out = io.StringIO()
    console = Console(out, live=False, color=False, provider=GitHubActions())
    console.sources = {"test": ("ci/ciflow.py", 12)}
    console.module_started("build", 1)
    console.module_started("test", 1)
    console.output("build", "compiling")
    console.output("test", "collecting, 50% done")
    console.output("build", "linking")
    console.module_finished(ModuleRecord("build", Outcome.SUCCEEDED, 1, 1.0, 2.0, 1.0))
    console.module_finished(
        ModuleRecord("test", Outcome.FAILED, 1, 1.0, 3.0, 2.0, error="exit 1: a,b\nlast line")
    )
    lines = out.getvalue().splitlines()
    assert lines[2:6] == ["::group::build", "[build] compiling", "[build] linking", "::endgroup::"]
    assert lines[7:10] == ["::group::test", "[test] collecting, 50% done", "::endgroup::"]
    assert lines[10] == (
        "::error file=ci/ciflow.py,line=12,title=test failed::exit 1: a,b%0Alast line"
    )
    assert lines[11] == "[test] failed in 2.00s: exit 1: a,b"
