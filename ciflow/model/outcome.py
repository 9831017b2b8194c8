"""Outcomes: how each module of a run ended, and the record kept of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..errors import ExitCode

__all__ = ["HAS_VALUE", "MISSING", "ModuleRecord", "Outcome", "RunResult", "Span"]

#: the state shown for a module without an outcome (its result never reached the store)
MISSING = "missing"


class Outcome(enum.StrEnum):
    """The status a module ends with; exactly one per module per run."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CACHED = "cached"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    DEPENDENCY_FAILED = "dependency_failed"
    IGNORED_FAILURE = "ignored_failure"

    @property
    def ok(self) -> bool:
        """Counts as success for dependents: succeeded, cached, ignored_failure."""
        return self in _OK

    @property
    def has_value(self) -> bool:
        """Hands dependents a value: succeeded, cached (others hand ``None``)."""
        return self in HAS_VALUE

    @property
    def bad(self) -> bool:
        """Makes the run fail: failed, timed_out, dependency_failed, cancelled."""
        return self in _BAD


_OK = frozenset({Outcome.SUCCEEDED, Outcome.CACHED, Outcome.IGNORED_FAILURE})
#: outcomes that hand dependents a value (the others hand ``None``)
HAS_VALUE = frozenset({Outcome.SUCCEEDED, Outcome.CACHED})
_BAD = frozenset({Outcome.FAILED, Outcome.TIMED_OUT, Outcome.DEPENDENCY_FAILED, Outcome.CANCELLED})


@dataclass(slots=True)
class ModuleRecord:
    """What happened to one module: outcome, attempts, wall-clock start/end, error or reason."""

    name: str
    outcome: Outcome | None = None
    attempts: int = 0
    start: float | None = None  # seconds since the epoch
    end: float | None = None
    duration: float = 0.0
    error: str | None = None
    skip_reason: str | None = None
    result: bytes | None = None  # the result's JSON
    worker: str | None = None
    slot: int | None = None
    definition_error: bool = False  # the failure is a bug in the pipeline file (exit 2)
    #: for a module with ``cache=True``: "hit", or "miss: <what changed>" (None: not looked up)
    cache: str | None = None
    #: seconds a cache hit saved (the duration recorded with the entry)
    saved: float = 0.0
    #: content digest of the module's declared outputs after it ran (for dependents' cache keys)
    outputs_digest: str | None = None
    #: the CI run attempt that produced the outcome (a re-run resumes a run), if known
    run_attempt: int | None = None

    @property
    def state(self) -> str:
        """The outcome's value, or ``missing`` for a module without an outcome."""
        return MISSING if self.outcome is None else self.outcome.value


@dataclass(frozen=True, slots=True)
class Span:
    """How long a run took: ``seconds`` to show, and the raw ``wall`` span of its records.

    ``skewed``: the records' wall clocks (from different machines) disagree, so ``seconds``
    is bounded by what each worker measured on its own clock instead of ``wall``.
    """

    seconds: float
    wall: float
    skewed: bool = False


#: seconds by which the wall span must exceed what the workers' own clocks allow to be called
#: skew (less is the hand-off between workers, not worth a note)
_SKEW_NOTICED = 1.0

_VERDICTS = {
    ExitCode.OK: "OK",
    ExitCode.FAILED: "FAILED",
    ExitCode.USAGE: "FAILED (pipeline error)",
    ExitCode.INCOMPLETE: "FAILED (results missing)",
    ExitCode.INTERRUPTED: "INTERRUPTED",
}


@dataclass
class RunResult:
    """The records of a finished run, in dependency order, and how it ended.

    ``warnings``: what reading the run found wrong but could go on from (a corrupted result),
    one line each, printed with the summary.
    """

    run_id: str
    records: list[ModuleRecord]
    started: float
    finished: float
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[ModuleRecord]:
        """The records of modules without an outcome."""
        return [r for r in self.records if r.outcome is None]

    @property
    def exit_code(self) -> ExitCode:
        """The first that applies: interrupted, a definition error, a module that did not
        succeed, a module without an outcome (`ExitCode.INCOMPLETE`), else OK."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        if any(r.definition_error for r in self.records):
            return ExitCode.USAGE
        if any(r.outcome is not None and r.outcome.bad for r in self.records):
            return ExitCode.FAILED
        if self.missing:
            return ExitCode.INCOMPLETE
        return ExitCode.OK

    @property
    def verdict(self) -> str:
        """The summary's headline word: ``OK`` exactly when `exit_code` is 0."""
        return _VERDICTS.get(self.exit_code, "FAILED")

    @property
    def span(self) -> Span:
        """How long the run took, in a way clock skew between workers cannot inflate.

        Records of one machine (a local run, or one worker) share a clock: the span is
        ``finished - started``. Records of several workers carry several wall clocks, so their
        ``max(end) - min(start)`` can be off by any skew. Each worker's own window (its first
        start to its last end, on its one clock) is exact; the run lasted at least the longest
        window and, as long as at every moment some worker was working on a result, at most
        all windows laid end to end. The wall span is clamped into that range (see
        docs/architecture.md, "Summary").
        """
        wall = max(0.0, self.finished - self.started)
        windows: dict[str, tuple[float, float]] = {}
        for rec in self.records:
            if rec.worker is None or rec.end is None:
                continue
            first = rec.start if rec.start is not None else rec.end
            low, high = windows.get(rec.worker, (first, rec.end))
            windows[rec.worker] = (min(low, first), max(high, rec.end))
        if len(windows) < 2:
            return Span(wall, wall)
        lengths = [max(0.0, high - low) for low, high in windows.values()]
        longest, laid_end_to_end = max(lengths), sum(lengths)
        seconds = min(max(wall, longest), laid_end_to_end)
        return Span(seconds, wall, skewed=wall - seconds > _SKEW_NOTICED)
