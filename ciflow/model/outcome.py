"""Outcomes: how each module of a run ended, and the record kept of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DEPENDENCY_EFFECT", "ModuleRecord", "Outcome", "dependency_verdict"]


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
    def bad(self) -> bool:
        """Makes the run fail: failed, timed_out, dependency_failed, cancelled."""
        return self in _BAD


_OK = frozenset({Outcome.SUCCEEDED, Outcome.CACHED, Outcome.IGNORED_FAILURE})
_BAD = frozenset({Outcome.FAILED, Outcome.TIMED_OUT, Outcome.DEPENDENCY_FAILED, Outcome.CANCELLED})


# How a required dependency's outcome decides a dependent that never ran:
# (the dependent's outcome, the words for the reason, severity: the worst one wins).
DEPENDENCY_EFFECT: dict[Outcome, tuple[Outcome, str, int]] = {
    Outcome.SKIPPED: (Outcome.SKIPPED, "was skipped", 0),
    Outcome.CANCELLED: (Outcome.CANCELLED, "was cancelled", 1),
    Outcome.FAILED: (Outcome.DEPENDENCY_FAILED, "failed", 2),
    Outcome.TIMED_OUT: (Outcome.DEPENDENCY_FAILED, "timed out", 2),
    Outcome.DEPENDENCY_FAILED: (Outcome.DEPENDENCY_FAILED, "did not run (dependency failed)", 2),
}


def dependency_verdict(outcomes: dict[str, Outcome]) -> tuple[Outcome, str] | None:
    """How a module ends without running, given its required dependencies' outcomes.

    None when every dependency counts as success. Used by the engine and the workers alike.
    """
    worst: tuple[Outcome, str, int] | None = None
    for name, outcome in outcomes.items():
        effect = DEPENDENCY_EFFECT.get(outcome)
        if effect is not None and (worst is None or worst[2] < effect[2]):
            worst = (effect[0], f"dependency {name} {effect[1]}", effect[2])
    return None if worst is None else (worst[0], worst[1])


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
