"""The local engine: run a pipeline's modules on this machine, in parallel, with full semantics.

`Engine.run()` executes the selected modules with up to ``jobs`` at a time in worker threads.
Scheduling state lives under one lock and is updated by whichever thread finishes a module, so a
finished module hands its successors on without a thread switch. The calling thread only keeps
time: module timeouts, retry back-off, Ctrl-C/SIGTERM, and stopping modules that ignore a cancel.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._gc import gc_paused
from .._signals import catching_signals
from ..model.outcome import HAS_VALUE, ModuleRecord, Outcome, RunResult
from ..model.pipeline import Pipeline, Selection
from .attempt import AttemptResult, Ending, run_attempt
from .context import Context
from .holdings import Holdings
from .policy import DEPENDENCY_EFFECT as _DEP_OUTCOME
from .policy import cannot_run, fail_fast_reason, settle
from .process import KILL_GRACE, Cancellation
from .runner import default_jobs, new_run_id

if TYPE_CHECKING:
    from ..cache.session import ModuleCache
    from ..ui.console import Console

__all__ = ["Engine"]

_POLL = 0.05  # how often the timekeeping thread looks at signals when nothing else wakes it
_INTERRUPTED = (
    "interrupted: cancelling running modules (always_run modules still run; interrupt again "
    "to stop them too)",
    "interrupted again: cancelling always_run modules too",
)


class _Attempt:
    __slots__ = ("index", "number", "cancellation", "timed_out", "abandoned", "retired", "start")

    def __init__(self, index: int, number: int) -> None:
        self.index, self.number, self.start = index, number, 0.0
        self.cancellation = Cancellation()
        self.timed_out = False
        self.abandoned = False  # the engine gave up waiting; the thread's result is discarded
        self.retired = False  # the thread running it was replaced and must exit afterwards


class Engine:
    """Run one selection of a pipeline on this machine. Create, then call `run()` once."""

    def __init__(
        self,
        pipeline: Pipeline,
        selection: Selection | None = None,
        *,
        console: Console | None = None,
        jobs: int | None = None,
        keep_going: bool = False,
        workdir: Path | None = None,
        run_id: str | None = None,
        environ: Mapping[str, str] | None = None,
        kill_grace: float = KILL_GRACE,
        handle_signals: bool = True,
        cache: ModuleCache | None = None,
    ) -> None:
        if console is None:
            from ..ui.console import Console

            console = Console()
        self.pipeline = pipeline
        self.selection = selection if selection is not None else pipeline.select()
        self.console = console
        self.jobs = max(1, jobs if jobs is not None else default_jobs())
        self.keep_going = keep_going
        self.workdir = workdir if workdir is not None else Path.cwd()
        self.run_id = run_id or new_run_id()
        self.environ = environ
        self.kill_grace = kill_grace
        self.handle_signals = handle_signals
        self._external_cancel: str | None = None
        self.cache = cache
        self._products: dict[str, tuple[str, str]] = {}  # digests cached dependents' keys use

        with gc_paused():
            self._prepare(pipeline)

    def _prepare(self, pipeline: Pipeline) -> None:
        names = list(self.selection.names)
        index = {name: i for i, name in enumerate(names)}
        self._names = names
        self._mods = [pipeline.modules[n] for n in names]
        self._bindings = [pipeline.bindings[n] for n in names]
        self._records = [ModuleRecord(n) for n in names]
        self._offset: dict[int, float] = {}  # wall minus monotonic clock at a module's start
        count = len(names)
        self._index = index
        self._succ: list[list[int]] = [[] for _ in range(count)]
        self._optional_edges: set[tuple[int, int]] = set()  # (dependent, dependency)
        pending = [0] * count
        succ = self._succ
        for i, mod in enumerate(self._mods):
            for dep in mod.depends_on:
                j = index.get(dep.name)
                if j is not None:
                    succ[j].append(i)
                    pending[i] += 1
                    if dep.optional:
                        self._optional_edges.add((i, j))
        self._pending = pending
        self._blocked: list[tuple[Outcome, str, int] | None] = [None] * count
        self._values: list[Any] = [None] * count
        self._rank = self._ranks()
        self._constrained = any(m.constraints for m in self._mods)

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._ready: list[tuple[float, int]] = []
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = 0
        self._running: dict[int, _Attempt] = {}
        self._remaining = count
        self._holdings = Holdings()
        self._cancelled: str | None = None  # why the run stopped starting modules
        self._hard_cancel = False  # second interrupt: always_run modules are cancelled too
        self._interrupts = 0
        self._finished = False
        self._threads: list[threading.Thread] = []
        self._thread_seq = 0

    # ----------------------------------------------------------------- public

    def run(self) -> RunResult:
        """Run the selection to the end; returns the records. Never raises for module failures."""
        started = time.time()
        self.console.run_started(self.run_id, len(self._names), self.jobs)
        # The pipeline's objects live for the whole run: keep the cyclic GC from rescanning them.
        gc.freeze()
        try:
            with self._lock:
                for i, name in enumerate(self._names):
                    if name in self.selection.skipped:
                        self._finish(i, Outcome.SKIPPED, reason="left out with --skip")
                for i in range(len(self._names)):
                    if self._pending[i] == 0 and self._records[i].outcome is None:
                        resolved = self._queue_or_resolve(i)
                        if resolved is not None:
                            self._finish(resolved[0], resolved[1], reason=resolved[2])
                for _ in range(self.jobs):
                    self._spawn_worker()
            with catching_signals(lambda signum: self.interrupt(), self.handle_signals):
                self._keep_time()
        finally:
            gc.unfreeze()
            with self._lock:
                self._finished = True
                self._work.notify_all()
        result = RunResult(
            self.run_id, self._records, started, time.time(), interrupted=self._interrupts > 0
        )
        self.console.run_finished(result)
        return result

    def interrupt(self) -> None:
        """Behave as if Ctrl-C was pressed (safe from any thread or a signal handler)."""
        self._interrupts += 1

    def cancel(self, reason: str) -> None:
        """Fail-fast from outside (another worker failed): like a failure, not an interrupt."""
        self._external_cancel = reason
        self._wake.set()

    # ------------------------------------------------------------ scheduling

    def _ranks(self) -> list[float]:
        rank = [0.0] * len(self._mods)
        for i in range(len(self._mods) - 1, -1, -1):
            cost = self._mods[i].cost
            tail = max((rank[s] for s in self._succ[i]), default=0.0)
            rank[i] = (1.0 if cost is None else cost) + tail
        return rank

    def _queue_or_resolve(self, i: int) -> tuple[int, Outcome, str] | None:
        """All dependencies of ``i`` have ended: queue it, or say how it ends (lock held)."""
        blocked = self._blocked[i]
        verdict = None if blocked is None else (blocked[0], blocked[1])
        ends = cannot_run(self._mods[i], verdict, self._cancelled, self._hard_cancel)
        if ends is not None:
            return (i, ends[0], ends[1])
        self._queue(i)
        return None

    def _queue(self, i: int) -> None:
        if self._mods[i].alone:
            self._holdings.alone_waiting += 1
        heapq.heappush(self._ready, (-self._rank[i], i))

    def _can_start(self, i: int) -> bool:
        return self._holdings.can_start(self._mods[i].constraints, len(self._running))

    def _next_startable(self) -> int | None:
        ready = self._ready
        if not ready:
            return None
        if not self._constrained:
            return heapq.heappop(ready)[1]
        held: list[tuple[float, int]] = []
        found = None
        while ready:
            item = heapq.heappop(ready)
            if self._can_start(item[1]):
                found = item[1]
                break
            held.append(item)
        for item in held:
            heapq.heappush(ready, item)
        return found

    def _take(self, i: int, attempt: _Attempt) -> None:
        self._running[i] = attempt
        if constraints := self._mods[i].constraints:
            self._holdings.take(constraints)

    def _release(self, i: int) -> None:
        del self._running[i]
        if constraints := self._mods[i].constraints:
            self._holdings.release(constraints)
        if self._constrained:
            self._work.notify_all()

    def _finish(
        self,
        i: int,
        outcome: Outcome,
        *,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Record the final outcome of ``i`` and hand on to its dependents (lock held)."""
        stack: list[tuple[int, Outcome, str | None]] = [(i, outcome, reason)]
        queued = len(self._ready)
        while stack:
            k, out, why = stack.pop()
            rec = self._records[k]
            rec.outcome = out
            if out is Outcome.SKIPPED:
                rec.skip_reason = why
            elif k == i and error is not None:
                rec.error = error
            elif why is not None:
                rec.error = why
            self._remaining -= 1
            self.console.module_finished(rec)
            effect = _DEP_OUTCOME.get(out)
            for s in self._succ[k]:
                self._pending[s] -= 1
                if effect is not None and (s, k) not in self._optional_edges:
                    current = self._blocked[s]
                    if current is None or current[2] < effect[2]:
                        why_s = f"dependency {self._names[k]} {effect[1]}"
                        self._blocked[s] = (effect[0], why_s, effect[2])
                if self._pending[s] == 0:
                    resolved = self._queue_or_resolve(s)
                    if resolved is not None:
                        stack.append(resolved)
        newly_ready = len(self._ready) - queued
        if newly_ready > 1:
            self._work.notify(newly_ready - 1)
        if self._remaining == 0:
            self._work.notify_all()
            self._wake.set()

    def _cancel_run(self, reason: str, *, hard: bool = False) -> None:
        """Stop starting modules (but always_run ones) and cancel running ones (lock held)."""
        if self._cancelled is None:
            self._cancelled = reason
        if hard:
            self._hard_cancel = True
        keep: list[tuple[float, int]] = []
        drop: list[int] = []
        for item in self._ready:
            mod = self._mods[item[1]]
            if mod.always_run and not hard:
                keep.append(item)
            else:
                drop.append(item[1])
                if mod.alone:
                    self._holdings.alone_waiting -= 1
        heapq.heapify(keep)
        self._ready = keep
        for i in drop:
            self._finish(i, Outcome.CANCELLED, reason=reason)
        for i, attempt in list(self._running.items()):
            if hard or not self._mods[i].always_run:
                self._cancel_attempt(attempt, reason)
        self._work.notify_all()

    def _cancel_attempt(self, attempt: _Attempt, reason: str) -> None:
        threading.Thread(target=attempt.cancellation.cancel, args=(reason,), daemon=True).start()
        self._add_timer(time.monotonic() + self.kill_grace + 1.0, "abandon", attempt)

    def _add_timer(self, when: float, kind: str, payload: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, payload))
        self._wake.set()

    # ------------------------------------------------------------- threads

    def _spawn_worker(self) -> None:
        self._thread_seq += 1
        thread = threading.Thread(
            target=self._worker, name=f"ciflow-worker-{self._thread_seq}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _worker(self) -> None:
        loop: asyncio.AbstractEventLoop | None = None
        lock = self._lock
        lock.acquire()
        try:
            while True:
                i = self._next_startable()
                if i is None:
                    if self._finished or self._remaining == 0:
                        return
                    self._work.wait()
                    continue
                rec = self._records[i]
                attempt = _Attempt(i, rec.attempts + 1)
                rec.attempts = attempt.number
                self._take(i, attempt)
                lock.release()
                try:
                    if loop is None and self._mods[i].is_async:
                        loop = asyncio.new_event_loop()
                    outcome = self._execute(i, attempt, loop)
                finally:
                    lock.acquire()
                if attempt.abandoned:
                    return  # a replacement thread took this one's place
                self._complete(i, attempt, outcome)
        finally:
            lock.release()
            if loop is not None:
                loop.close()

    def _execute(
        self, i: int, attempt: _Attempt, loop: asyncio.AbstractEventLoop | None
    ) -> AttemptResult:
        """Run one attempt of module ``i`` (no lock held)."""
        mod, rec, cache = self._mods[i], self._records[i], self.cache

        def started() -> None:
            attempt.start = time.monotonic()
            if rec.start is None:
                rec.start = time.time()
                self._offset[i] = rec.start - attempt.start
            if mod.timeout is not None:
                with self._lock:
                    self._add_timer(attempt.start + mod.timeout, "timeout", attempt)
            self.console.module_started(mod.name, attempt.number)

        result = run_attempt(
            mod, self._bindings[i], number=attempt.number,
            context=lambda: self._context(i, attempt),
            inputs={dep: self._dep_value(dep) for _, dep in self._bindings[i].dep_params},
            cancellation=attempt.cancellation, output=self.console.output,
            on_start=started, loop=loop,
            lookup=None if cache is None else cache.hook(mod.name, attempt.number, self._products),
        )  # fmt: skip
        if result.ending in (Ending.SUCCESS, Ending.CACHED):
            rec.result = result.data
            if cache is not None:  # store it, hand its digests on to cached dependents
                took = rec.duration + time.monotonic() - attempt.start
                cache.finished(mod.name, result, took, rec, self._products)
        return result

    def _context(self, i: int, attempt: _Attempt) -> Context:
        return Context(
            self._names[i], workdir=self.workdir, run_id=self.run_id, attempt=attempt.number,
            cancellation=attempt.cancellation, output=self.console.output, environ=self.environ,
        )  # fmt: skip

    def _dep_value(self, dep_name: str) -> Any:
        j = self._index.get(dep_name)
        if j is None:  # an optional dependency that was not selected
            return None
        return self._values[j] if self._records[j].outcome in HAS_VALUE else None

    def _complete(self, i: int, attempt: _Attempt, result: AttemptResult) -> None:
        """Turn an attempt's ending into an outcome or a retry (lock held)."""
        rec = self._records[i]
        self._release(i)
        settled = settle(
            self._mods[i],
            result,
            attempt.number,
            timed_out=attempt.timed_out,
            run_cancelled=self._cancelled is not None,
        )
        if result.ending is Ending.SKIPPED:
            rec.attempts = 0
            self._finish(i, Outcome.SKIPPED, reason=settled.error)
            return
        rec.end = time.monotonic() + self._offset[i] if i in self._offset else time.time()
        rec.duration += time.monotonic() - attempt.start
        if settled.outcome in HAS_VALUE:
            self._values[i] = result.value
            rec.error = None  # an earlier attempt's error is history now
            self._finish(i, settled.outcome)
            return
        if settled.outcome is Outcome.CANCELLED:
            self._finish(i, Outcome.CANCELLED, error=settled.error)
            return
        rec.definition_error = settled.definition_error
        rec.error = settled.error
        if settled.retry_in is not None:
            self.console.module_retry(
                self._names[i], attempt.number, settled.retry_in, settled.error or ""
            )
            self._add_timer(time.monotonic() + settled.retry_in, "retry", (i, settled.outcome))
            return
        self._finish(i, settled.outcome, error=settled.error)
        if settled.outcome.bad and not self.keep_going:
            self._cancel_run(fail_fast_reason(self._names[i], settled.outcome))

    # ------------------------------------------------------------ timekeeping

    def _keep_time(self) -> None:
        handled = 0
        while True:
            with self._lock:
                if self._remaining == 0:
                    return
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, kind, payload = heapq.heappop(self._timers)
                    self._fire(kind, payload)
                wait = _POLL
                if self._timers:
                    wait = min(wait, max(0.0, self._timers[0][0] - now))
                if self._interrupts > handled:
                    handled = self._interrupts
                    self._on_interrupt(handled)
                    continue
                if self._external_cancel is not None and self._cancelled is None:
                    self._cancel_run(self._external_cancel)
                    continue
            self.console.tick()
            self._wake.wait(wait)
            self._wake.clear()

    def _fire(self, kind: str, payload: Any) -> None:
        if kind == "retry":
            i, outcome = payload
            if self._cancelled is not None and not (
                self._mods[i].always_run and not self._hard_cancel
            ):
                self._finish(i, outcome, error=self._records[i].error)
                return
            self._queue(i)
            self._work.notify()
            return
        attempt: _Attempt = payload
        if self._running.get(attempt.index) is not attempt:
            return
        if kind == "timeout":
            attempt.timed_out = True
            mod = self._mods[attempt.index]
            self._cancel_attempt(attempt, f"timed out after {mod.timeout:g}s")
        elif kind == "abandon":
            self._abandon(attempt)

    def _abandon(self, attempt: _Attempt) -> None:
        """A cancelled module did not stop in time: record it and free its place (lock held)."""
        i = attempt.index
        attempt.abandoned = True
        note = f"did not stop within {self.kill_grace + 1.0:g}s of being cancelled; abandoned"
        self.console.output(self._names[i], note)
        detail = f"{attempt.cancellation.reason or 'cancelled'}; {note}"
        self._complete(i, attempt, AttemptResult(Ending.CANCELLED, detail=detail))
        self._spawn_worker()

    def _on_interrupt(self, count: int) -> None:
        self.console.message(_INTERRUPTED[min(count, 2) - 1])
        self._cancel_run("interrupted", hard=count > 1)
