"""Run one module to its end in the calling thread: attempts, timeout, retries, cancellation.

The distributed worker runs each module it holds with `run_module` in a pool thread; the local
engine schedules many modules itself but decides their outcomes with the same `run_attempt` and
`settle`. Each attempt runs in a thread of its own, so that a module that ignores its timeout or
a cancellation is abandoned after a grace period instead of holding its caller forever.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.module import Module
from ..model.outcome import HAS_VALUE, ModuleRecord, Outcome
from ..model.pipeline import Binding
from .attempt import AttemptResult, Ending, run_attempt
from .context import Context
from .policy import settle
from .process import KILL_GRACE, Cancellation

if TYPE_CHECKING:
    from ..ui.console import Console

__all__ = ["ModuleRun", "RunSettings", "default_jobs", "new_run_id", "run_module"]


def default_jobs() -> int:
    """Default parallelism: CPUs x 2, since CI modules mostly wait on subprocesses and I/O."""
    return (os.cpu_count() or 1) * 2


def new_run_id() -> str:
    """A fresh run id (``CIFLOW_RUN_ID`` overrides it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.environ.get("CIFLOW_RUN_ID") or f"{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunSettings:
    """Where and how a module runs: its working directory, run id, environment, grace."""

    workdir: Path
    run_id: str
    environ: Mapping[str, str] | None = None
    kill_grace: float = KILL_GRACE


class ModuleRun:
    """The handle of one module's run: cancel it from any thread (fail-fast, a signal)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._current: Cancellation | None = None
        self.reason: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        """Cancel the running attempt (its process trees are killed) and start no retry."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            current = self._current
        self._stop.set()
        if current is not None:
            current.cancel(reason)

    def _attach(self, cancellation: Cancellation) -> None:
        with self._lock:
            self._current = cancellation
            reason = self.reason
        if reason is not None:
            cancellation.cancel(reason)

    def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless cancelled meanwhile; True if the pause was not cut short."""
        return not self._stop.wait(seconds)


class _Attempt:
    """One attempt in its own thread, with its clock and its ending."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.cancellation = Cancellation()
        self.started: float | None = None
        self.result: AttemptResult | None = None
        self.done = threading.Event()
        self.timed_out = False


def run_module(
    mod: Module,
    binding: Binding,
    *,
    inputs: Mapping[str, Any],
    first_attempt: int,
    settings: RunSettings,
    console: Console,
    handle: ModuleRun | None = None,
    lookup: Callable[[], AttemptResult | None] | None = None,
) -> ModuleRecord:
    """Run ``mod`` until it has an outcome; attempts count on from ``first_attempt``.

    Returns the record (outcome, attempts, times, error, the result's JSON). Never raises for
    what the module does. ``lookup``: the result cache's hook, for the first attempt.
    """
    handle = handle if handle is not None else ModuleRun()
    record = ModuleRecord(mod.name)
    number = first_attempt
    while True:
        attempt = _Attempt(number)
        handle._attach(attempt.cancellation)
        hook = lookup if number == first_attempt else None
        result = _attempt(mod, binding, attempt, inputs, settings, console, hook)
        record.attempts = number
        settled = settle(
            mod, result, number, timed_out=attempt.timed_out, run_cancelled=handle.cancelled
        )
        if result.ending is Ending.SKIPPED:
            record.attempts = 0
            record.outcome, record.skip_reason = Outcome.SKIPPED, settled.error
            break
        if record.start is None and attempt.started is not None:
            record.start = time.time() - (time.monotonic() - attempt.started)
        record.end = time.time()
        if attempt.started is not None:
            record.duration += time.monotonic() - attempt.started
        record.error, record.definition_error = settled.error, settled.definition_error
        if settled.outcome in HAS_VALUE:
            record.outcome, record.result, record.error = settled.outcome, result.data, None
            break
        if settled.retry_in is None:
            record.outcome = settled.outcome
            break
        console.module_retry(mod.name, number, settled.retry_in, settled.error or "")
        if not handle.pause(settled.retry_in):
            record.outcome = settled.outcome  # cancelled during the back-off: no retry
            break
        number += 1
    console.module_finished(record)
    return record


def _attempt(
    mod: Module,
    binding: Binding,
    attempt: _Attempt,
    inputs: Mapping[str, Any],
    settings: RunSettings,
    console: Console,
    lookup: Callable[[], AttemptResult | None] | None,
) -> AttemptResult:
    """Run the attempt in a thread; enforce the timeout; abandon it if it will not stop."""
    context: Callable[[], Context] = lambda: Context(  # noqa: E731
        mod.name,
        workdir=settings.workdir,
        run_id=settings.run_id,
        attempt=attempt.number,
        cancellation=attempt.cancellation,
        output=console.output,
        environ=settings.environ,
    )

    def started() -> None:
        attempt.started = time.monotonic()
        console.module_started(mod.name, attempt.number)

    def body() -> None:
        try:
            attempt.result = run_attempt(
                mod, binding, number=attempt.number, context=context, inputs=inputs,
                cancellation=attempt.cancellation, output=console.output, on_start=started,
                lookup=lookup,
            )  # fmt: skip
        finally:
            attempt.done.set()

    thread = threading.Thread(target=body, name=f"ciflow-module-{mod.name}", daemon=True)
    thread.start()
    _watch(mod, attempt, settings.kill_grace)
    if attempt.result is not None:
        return attempt.result
    reason = attempt.cancellation.reason or "cancelled"
    note = f"did not stop within {settings.kill_grace + 1.0:g}s of being cancelled; abandoned"
    console.output(mod.name, note)
    return AttemptResult(Ending.CANCELLED, detail=f"{reason}; {note}")


def _watch(mod: Module, attempt: _Attempt, grace: float) -> None:
    """Wait for the attempt: cancel it at its timeout, give up ``grace`` + 1 s after a cancel."""
    cancellation = attempt.cancellation
    while not attempt.done.wait(0.05):
        if cancellation.cancelled:
            since = cancellation.cancelled_at or time.monotonic()
            if time.monotonic() >= since + grace + 1.0:
                return
        elif (
            mod.timeout is not None
            and attempt.started is not None
            and not attempt.timed_out
            and time.monotonic() >= attempt.started + mod.timeout
        ):
            attempt.timed_out = True
            reason = f"timed out after {mod.timeout:g}s"
            threading.Thread(target=cancellation.cancel, args=(reason,), daemon=True).start()
