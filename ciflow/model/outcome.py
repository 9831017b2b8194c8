"""Outcomes: how each module of a run ended, and the record kept of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["HAS_VALUE", "ModuleRecord", "Outcome", "RunResult"]


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


@dataclass
class RunResult:
    """The records of a finished run, in dependency order, and how it ended."""

    run_id: str
    records: list[ModuleRecord]
    started: float
    finished: float
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        """0 all good, 1 a module failed, 2 a result broke its annotation, 130 interrupted."""
        if self.interrupted:
            return 130
        if any(r.definition_error for r in self.records):
            return 2
        if any(r.outcome is not None and r.outcome.bad for r in self.records):
            return 1
        return 0
