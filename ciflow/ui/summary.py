"""The end-of-run summary: a table of modules (failures first), skip reasons, first errors."""

from __future__ import annotations

import time

from ..errors import ExitCode
from ..execution.masking import MASKER
from ..model.outcome import ModuleRecord, Outcome, RunResult
from .console import format_duration

__all__ = ["render_summary", "store_calls", "to_markdown", "write_step_summary"]

_MAX_ERROR_LINES = 12


def _clock(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 10)}"


def _order(records: list[ModuleRecord]) -> list[ModuleRecord]:
    position = {r.name: i for i, r in enumerate(records)}

    def key(rec: ModuleRecord) -> tuple[int, float, int]:
        bad = rec.outcome is None or rec.outcome.bad
        return (
            0 if bad else 1,
            rec.start if rec.start is not None else float("inf"),
            position[rec.name],
        )

    return sorted(records, key=key)


def render_summary(result: RunResult, problem: str | None = None) -> str:
    """The summary as text, ready to print anywhere (secrets masked).

    The headline says ``OK`` exactly when the run's exit code is 0; ``problem`` (e.g. "report
    not written") makes it ``FAILED (<problem>)`` for a run whose command fails after it.
    """
    records = _order(result.records)
    lines = ["", "Summary", *_table(records)]
    skipped = [r for r in records if r.outcome is Outcome.SKIPPED and r.skip_reason]
    if skipped:
        lines += ["", "Skipped"]
        lines += [f"  {r.name}: {r.skip_reason}" for r in skipped]
    lines += _cache_lines(records)
    failed = [r for r in records if r.error and (r.outcome is None or r.outcome in _ERRORS)]
    if failed:
        lines += ["", "Errors"]
        for rec in failed:
            error_lines = (rec.error or "").splitlines()
            if len(error_lines) > _MAX_ERROR_LINES:
                error_lines = [*error_lines[:1], "  ...", *error_lines[-(_MAX_ERROR_LINES - 2) :]]
            lines.append(f"  {rec.name} ({rec.state}): {error_lines[0]}")
            lines += [f"    {line}" for line in error_lines[1:]]
    counts: dict[str, int] = {}
    for rec in result.records:
        key = rec.state.replace("_", " ")
        counts[key] = counts.get(key, 0) + 1
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    verdict = result.verdict if problem is None else f"FAILED ({problem})"
    span = result.span
    lines += ["", f"{verdict}: {len(result.records)} module(s): {tally} in "
              f"{format_duration(span.seconds)}"]  # fmt: skip
    if span.skewed:
        lines.append(_skew_note(span.wall, span.seconds))
    for extra in (_resumed_line(result.records), _saved_line(result.records)):
        if extra:
            lines.append(extra)
    return MASKER.mask("\n".join(lines))


def _cache_lines(records: list[ModuleRecord]) -> list[str]:
    """The "Cache" section: each looked-up module, hit or miss and why."""
    looked = [r for r in records if r.cache]
    if not looked:
        return []
    lines = ["", "Cache"]
    for rec in looked:
        what = f"hit, saved {format_duration(rec.saved)}" if rec.cache == "hit" else rec.cache
        lines.append(f"  {rec.name}: {what}")
    return lines


def _saved_line(records: list[ModuleRecord]) -> str | None:
    looked = [r for r in records if r.cache]
    if not looked:
        return None
    hits = [r for r in looked if r.cache == "hit"]
    saved = sum(r.saved for r in hits)
    return (
        f"cache: {len(hits)} hit(s), {len(looked) - len(hits)} miss(es); "
        f"hits saved {format_duration(saved)}"
    )


_ERRORS = (Outcome.FAILED, Outcome.TIMED_OUT, Outcome.IGNORED_FAILURE)


def run_attempts(records: list[ModuleRecord]) -> set[int]:
    """The CI run attempts that produced the records (more than one: the run was resumed)."""
    return {r.run_attempt for r in records if r.run_attempt is not None}


def _resumed_line(records: list[ModuleRecord]) -> str | None:
    """``run attempts: 1: 4 module(s), 2: 2 module(s) (test, report)`` for a resumed run."""
    attempts = run_attempts(records)
    if len(attempts) < 2:
        return None
    parts = []
    for attempt in sorted(attempts):
        names = [r.name for r in records if r.run_attempt == attempt]
        shown = f" ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"
        parts.append(
            f"{attempt}: {len(names)} module(s)" + (shown if attempt != min(attempts) else "")
        )
    return "run attempts (re-run failed jobs resumed the run): " + "; ".join(parts)


def _table(records: list[ModuleRecord]) -> list[str]:
    show_slot = any(r.slot is not None for r in records)
    show_run = len(run_attempts(records)) > 1
    header = ["module", "outcome", "duration", "start", "end", "attempts"]
    if show_slot:
        header.append("slot")
    if show_run:
        header.append("run attempt")
    rows = [header]
    for rec in records:
        row = [
            rec.name,
            rec.state,
            format_duration(rec.duration) if rec.start is not None else "-",
            _clock(rec.start),
            _clock(rec.end),
            str(rec.attempts) if rec.attempts else "-",
        ]
        if show_slot:
            row.append("-" if rec.slot is None else str(rec.slot))
        if show_run:
            row.append("-" if rec.run_attempt is None else str(rec.run_attempt))
        rows.append(row)
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def _skew_note(wall: float, seconds: float) -> str:
    return (
        f"note: the workers' wall clocks disagree: first start to last end is "
        f"{format_duration(wall)} by them, but the workers' own clocks allow at most "
        f"{format_duration(seconds)}; the span shown is the latter"
    )


def store_calls(store_ops: list[dict[str, int]], modules: int) -> str | None:
    """One line on the store calls the workers made (from their deregistrations), or None.

    Backends behind an API count each request by name (``ListArtifacts``, ``blob-upload``...,
    what rate limits count); those are shown alone. Otherwise the store operations are.
    """
    total: dict[str, int] = {}
    for ops in store_ops:
        for name, count in ops.items():
            total[name] = total.get(name, 0) + count
    api = {k: v for k, v in total.items() if k[:1].isupper() or k.startswith("blob-")}
    shown = api or total
    if not shown:
        return None
    calls = sum(shown.values())
    what = "API calls" if api else "store operations"
    parts = ", ".join(f"{k} {v}" for k, v in sorted(shown.items(), key=lambda kv: (-kv[1], kv[0])))
    per = f", {calls / modules:.1f} per module" if modules else ""
    return f"{what} by {len(store_ops)} worker(s): {calls}{per} ({parts})"


def to_markdown(result: RunResult, footer: str | None = None) -> str:
    """The summary as GitHub-flavoured Markdown: a table and a mermaid Gantt of what ran where."""
    from .diagram import to_gantt

    records = _order(result.records)
    span = result.span
    lines = [
        f"### ciflow run {result.run_id}: "
        + {0: "OK", 130: "interrupted"}.get(result.exit_code, "failed")
        + (" (results missing)" if result.exit_code == ExitCode.INCOMPLETE else ""),
        "",
    ]
    resumed = len(run_attempts(records)) > 1  # a resumed run: which attempt produced what
    lines += [
        "| module | outcome | duration | slot |"
        + (" run attempt |" if resumed else "")
        + " error or reason |",
        "|---|---|---|---|" + ("---|" if resumed else "") + "---|",
    ]
    for rec in records:
        outcome = rec.state
        cache = rec.cache if rec.cache and rec.cache != "hit" else ""
        why = (rec.error or rec.skip_reason or cache).splitlines()
        cell = why[0].replace("|", "\\|") if why else ""
        duration = format_duration(rec.duration) if rec.start is not None else "-"
        slot = "-" if rec.slot is None else str(rec.slot)
        run = ("-" if rec.run_attempt is None else str(rec.run_attempt)) + " | " if resumed else ""
        lines.append(f"| {rec.name} | {outcome} | {duration} | {slot} | {run}{cell} |")
    ran = [r for r in records if r.start is not None and r.end is not None]
    if span.skewed:  # a timeline from disagreeing clocks would be hours wide: leave it out
        lines += ["", _skew_note(span.wall, span.seconds)]
    elif ran:
        origin = min(r.start for r in ran if r.start is not None)
        sections: dict[str, list[tuple[str, float, float]]] = {}
        for rec in sorted(ran, key=lambda r: r.start or 0.0):
            label = "this machine" if rec.slot is None else f"slot {rec.slot}"
            start = (rec.start or origin) - origin
            sections.setdefault(label, []).append((rec.name, start, (rec.end or origin) - origin))
        lines += ["", "```mermaid", to_gantt("what ran where", list(sections.items())), "```"]
    for extra in (_resumed_line(result.records), _saved_line(result.records)):
        if extra:
            lines += ["", extra]
    if footer:
        lines += ["", footer]
    return MASKER.mask("\n".join(lines)) + "\n"


def write_step_summary(result: RunResult, footer: str | None = None) -> None:
    """Append the Markdown summary to the CI's step summary (``$GITHUB_STEP_SUMMARY``), if any."""
    import os

    from ..providers.registry import current

    path = current().step_summary(os.environ)
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(to_markdown(result, footer))
    except OSError as exc:
        from ..errors import UsageError

        raise UsageError(f"cannot write the step summary {path}: {exc.strerror or exc}") from None
