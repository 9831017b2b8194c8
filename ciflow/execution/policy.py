"""How a module's run ends: the one policy for outcomes, used by the engine and the workers.

- `dependency_verdict`: how a module ends without running, from its required dependencies'
  outcomes (the worst one wins: failed > cancelled > skipped).
- `cannot_run`: that, plus fail-fast cancellation and ``always_run``.
- `settle`: an attempt's ending becomes an outcome, or a retry after a back-off.
- `fail_fast_reason`: the words of the run's cancellation after a failure.

See docs/architecture.md, "Execution semantics".
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from ..model.module import Module
from ..model.outcome import Outcome
from .attempt import AttemptResult, Ending

__all__ = [
    "DEPENDENCY_EFFECT",
    "RETRY_DELAY_CAP",
    "Settlement",
    "cannot_run",
    "dependency_verdict",
    "fail_fast_reason",
    "retry_delay",
    "settle",
]

RETRY_DELAY_CAP = 60.0

# How a required dependency's outcome decides a dependent that never ran:
# (the dependent's outcome, the words for the reason, severity: the worst one wins).
DEPENDENCY_EFFECT: dict[Outcome, tuple[Outcome, str, int]] = {
    Outcome.SKIPPED: (Outcome.SKIPPED, "was skipped", 0),
    Outcome.CANCELLED: (Outcome.CANCELLED, "was cancelled", 1),
    Outcome.FAILED: (Outcome.DEPENDENCY_FAILED, "failed", 2),
    Outcome.TIMED_OUT: (Outcome.DEPENDENCY_FAILED, "timed out", 2),
    Outcome.DEPENDENCY_FAILED: (Outcome.DEPENDENCY_FAILED, "did not run (dependency failed)", 2),
}


def dependency_verdict(outcomes: Mapping[str, Outcome]) -> tuple[Outcome, str] | None:
    """How a module ends without running, given its required dependencies' outcomes.

    None when every dependency counts as success.
    """
    worst: tuple[Outcome, str, int] | None = None
    for name, outcome in outcomes.items():
        effect = DEPENDENCY_EFFECT.get(outcome)
        if effect is not None and (worst is None or worst[2] < effect[2]):
            worst = (effect[0], f"dependency {name} {effect[1]}", effect[2])
    return None if worst is None else (worst[0], worst[1])


def cannot_run(
    mod: Module,
    verdict: tuple[Outcome, str] | None,
    cancelled: str | None,
    hard: bool = False,
) -> tuple[Outcome, str] | None:
    """The outcome of a module whose dependencies have ended, if it must not run.

    ``verdict`` is its `dependency_verdict`, ``cancelled`` the run's cancellation reason (if
    the run was cancelled: fail-fast or an interrupt), ``hard`` a second interrupt. An
    ``always_run`` module runs anyway unless the cancellation is hard.
    """
    if mod.always_run and not hard:
        return None
    if verdict is not None:
        return verdict
    if cancelled is not None:
        return Outcome.CANCELLED, cancelled
    return None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What an attempt's ending means: a final outcome, or another attempt after ``retry_in``."""

    outcome: Outcome
    error: str | None
    retry_in: float | None = None
    definition_error: bool = False


def retry_delay(mod: Module, number: int) -> float:
    """The pause before attempt ``number + 1``: exponential from retry_delay, jitter ±50 %."""
    delay: float = min(RETRY_DELAY_CAP, mod.retry_delay * 2.0 ** (number - 1))
    return delay * random.uniform(0.5, 1.5)


def settle(
    mod: Module,
    result: AttemptResult,
    number: int,
    *,
    timed_out: bool,
    run_cancelled: bool,
) -> Settlement:
    """Turn attempt ``number``'s ending into an outcome or a retry.

    ``timed_out``: the attempt was cancelled by its module's timeout. ``run_cancelled``: the
    run is cancelled, so no retry starts.
    """
    if result.ending is Ending.SKIPPED:
        return Settlement(Outcome.SKIPPED, result.detail)
    if result.ending is Ending.SUCCESS:
        return Settlement(Outcome.SUCCEEDED, None)
    if result.ending is Ending.CACHED:
        return Settlement(Outcome.CACHED, None)
    if result.ending is Ending.CANCELLED and not timed_out:
        return Settlement(Outcome.CANCELLED, result.detail)
    if result.ending is Ending.CANCELLED:
        detail: str | None = f"timed out after {mod.timeout:g}s"
        outcome = Outcome.TIMED_OUT
    else:
        detail = result.detail
        outcome = Outcome.FAILED
    broken = result.definition_error
    if mod.ignore_failure and not broken:
        outcome = Outcome.IGNORED_FAILURE
    retry = number <= mod.retries and not run_cancelled and not broken
    return Settlement(outcome, detail, retry_delay(mod, number) if retry else None, broken)


def fail_fast_reason(name: str, outcome: Outcome, where: str = "") -> str:
    """``cancelled after build failed`` (``where``: e.g. `` on slot 2``)."""
    verb = "timed out" if outcome is Outcome.TIMED_OUT else "failed"
    return f"cancelled after {name} {verb}{where}"
