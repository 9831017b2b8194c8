"""The worker's hands: run the modules it holds in a thread pool and publish their results.

`ModuleExecutor.start` runs one module in a pool thread: its dependencies' values are decoded,
the files shipped by the modules upstream are restored into the workspace (once per worker),
the module runs with `execution.runner.run_module` (so outcomes, timeouts, retries and
cancellation mean what they mean in ``ciflow run``), and its result is published. The thread
then posts an `events.Ended` to the worker's loop. What goes wrong with one module's inputs
(a corrupt result, an archive that cannot be restored) fails that module, never the worker;
a store that refuses (permissions, a full disk) ends the worker (posted as `Crashed`); one
that kept failing through its transport's retries (`StoreFlaky`) is tried `PERSIST_TRIES`
more times, a growing pause apart, first.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..cache.digest import digest_bytes
from ..cache.key import UNKNOWN, Product
from ..errors import CiflowError
from ..execution.attempt import AttemptResult, Ending
from ..execution.policy import fail_fast_reason
from ..execution.runner import ModuleRun, RunSettings, run_module
from ..model.outcome import HAS_VALUE, ModuleRecord, Outcome
from ..model.pipeline import Pipeline
from ..stores.base import Store, StoreFlaky, StoreUnavailable
from ..ui.console import Console
from .events import Ended, Event
from .keys import RunKeys
from .messages import CancelRecord, encode
from .results import ResultCache, publish_result

if TYPE_CHECKING:
    from ..cache.session import ModuleCache

__all__ = ["Crashed", "ModuleExecutor", "failpoint"]

#: the cancel reason of a module stopped by a signal: it is handed back, not published
HANDED_BACK = "stopped by a signal"


#: how many more times a result is stored (or a module's inputs read) when the store kept
#: failing through the transport's own retries, and the pause before the first (it grows)
PERSIST_TRIES = 3
PERSIST_PAUSE = 2.0
T = TypeVar("T")


@dataclass(frozen=True)
class Crashed:
    """A pool thread met an error that ends the worker (the store cannot be reached)."""

    now: float
    error: BaseException


def failpoint(point: str, module: str) -> None:
    """Fault injection for tests: ``CIFLOW_FAILPOINT=<point>:<module>`` SIGKILLs this worker.

    Points: ``after-claim`` (claimed, nothing run), ``before-result`` (ran, result not yet
    written), ``after-outputs`` (outputs uploaded, result not yet written).
    """
    if os.environ.get("CIFLOW_FAILPOINT") == f"{point}:{module}":
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Identity:
    """Who publishes: the worker's id and slot, the run's keys and workspace."""

    worker: str
    slot: int
    keys: RunKeys
    workdir: Path
    keep_going: bool
    run_attempt: int | None = None  # the CI attempt this worker belongs to, if known


class ModuleExecutor:
    """Runs held modules in up to ``jobs`` threads; posts `Ended` (or `Crashed`) for each."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        results: ResultCache,
        me: Identity,
        console: Console,
        post: Callable[[Event | Crashed], None],
        jobs: int,
        cache: ModuleCache | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.store = store
        self.results = results
        self.me = me
        self.console = console
        self.post = post
        self.definition_errors: list[str] = []
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ciflow-run")
        self._lock = threading.Lock()
        self._handles: dict[str, ModuleRun] = {}
        self._restored: set[str] = set()
        self._restore_lock = threading.Lock()
        self._upstream: dict[str, list[str]] = {}
        self._cancelled = False
        self._shippers: set[str] | None = None

    def start(self, name: str, attempt: int, outcomes: Mapping[str, Outcome]) -> None:
        """Run ``name`` as ``attempt``; ``outcomes`` of its dependencies and upstream."""
        handle = ModuleRun()
        with self._lock:
            self._handles[name] = handle
        self._pool.submit(self._execute, name, attempt, dict(outcomes), handle)

    def upstream(self, name: str) -> list[str]:
        """Modules ``name`` needs, transitively, that declare outputs (dependency order)."""
        found = self._upstream.get(name)
        if found is None:
            found = self._upstream[name] = self._shipping_ancestors(name)
        return found

    def _shipping_ancestors(self, name: str) -> list[str]:
        mods = self.pipeline.modules
        if self._shippers is None:
            self._shippers = {n for n, m in mods.items() if m.outputs}
        if not self._shippers:
            return []
        seen: set[str] = set()
        todo = [d.name for d in mods[name].depends_on]
        while todo:
            dep = todo.pop()
            if dep in seen or dep not in mods:
                continue
            seen.add(dep)
            todo.extend(d.name for d in mods[dep].depends_on)
        return [n for n in self.pipeline.order if n in seen and n in self._shippers]

    def stop_all(self, reason: str, hard: bool) -> None:
        """Cancel what runs here; ``hard``: as a signal, so each module is handed back."""
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.cancel(HANDED_BACK if hard else reason)

    def shutdown(self, wait: bool) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # ------------------------------------------------------------------ one module

    def _execute(
        self, name: str, attempt: int, outcomes: dict[str, Outcome], handle: ModuleRun
    ) -> None:
        try:
            record = self._run(name, attempt, outcomes, handle)
            if record is None:
                self.post(Ended(time.monotonic(), name, attempt, None))
                return
            failpoint("before-result", name)
            written = self._persist(
                f"store the result of {name}", lambda: self._publish(record, attempt)
            )
            outcome = record.outcome or Outcome.CANCELLED
            self.post(Ended(time.monotonic(), name, attempt, outcome, written))
        except BaseException as exc:  # noqa: BLE001 - the loop decides what it means
            self.post(Crashed(time.monotonic(), exc))
        finally:
            with self._lock:
                self._handles.pop(name, None)

    def _run(
        self, name: str, attempt: int, outcomes: dict[str, Outcome], handle: ModuleRun
    ) -> ModuleRecord | None:
        """Run the module; None when a signal stopped it (it is handed back)."""
        mod = self.pipeline.modules[name]
        try:
            inputs = self._persist(
                f"read the inputs of {name}", lambda: self._prepare(name, outcomes)
            )
        except StoreUnavailable:
            raise
        except (CiflowError, ValueError, OSError) as exc:
            record = ModuleRecord(
                name, outcome=Outcome.FAILED, attempts=attempt, end=time.time(),
                error=f"cannot prepare its inputs: {exc}",
            )  # fmt: skip
            self.console.module_finished(record)
            return record
        settings = RunSettings(self.me.workdir, self.me.keys.run_id)
        cache, products = self.cache, self._products(name, outcomes)
        record = run_module(
            mod, self.pipeline.bindings[name], inputs=inputs, first_attempt=attempt,
            settings=settings, console=self.console, handle=handle,
            lookup=None if cache is None else cache.hook(name, 1, products),
        )  # fmt: skip
        if handle.reason == HANDED_BACK and record.outcome is Outcome.CANCELLED:
            return None
        if cache is not None and record.outcome in HAS_VALUE:
            ending = Ending.CACHED if record.outcome is Outcome.CACHED else Ending.SUCCESS
            done = AttemptResult(ending, data=record.result)
            cache.finished(name, done, record.duration, record, {})
        return record

    def _products(self, name: str, outcomes: Mapping[str, Outcome]) -> dict[str, Product]:
        """What the dependencies of ``name`` hand its cache key, from their result records."""
        products: dict[str, Product] = {}
        if self.cache is None or not self.cache.applies(name):
            return products
        for dep in self.pipeline.modules[name].depends_on:
            if not outcomes.get(dep.name, Outcome.FAILED).has_value:
                continue
            header = self.results.load(dep.name)
            digest = header.outputs_digest
            if digest is None:
                digest = UNKNOWN if self.pipeline.modules[dep.name].outputs else "-"
            products[dep.name] = (digest_bytes(self.results.payload(dep.name) or None), digest)
        return products

    def _persist(self, what: str, call: Callable[[], T]) -> T:
        """``call``, again after a pause when the store kept failing through its own retries
        (up to `PERSIST_TRIES` more times): a module's work is not thrown away, nor its worker
        ended, on one bad stretch of the store. Heartbeats go on meanwhile."""
        for again in range(1, PERSIST_TRIES + 1):
            try:
                return call()
            except StoreFlaky as exc:
                pause = PERSIST_PAUSE * again
                self.console.message(
                    f"[worker {self.me.slot}] warning: cannot {what} ({exc}); "
                    f"trying again in {pause:.0f}s ({again} of {PERSIST_TRIES})"
                )
                time.sleep(pause)
        return call()

    def _prepare(self, name: str, outcomes: Mapping[str, Outcome]) -> dict[str, Any]:
        inputs = self._inputs(name, outcomes)
        self._restore(name, outcomes)
        return inputs

    def _inputs(self, name: str, outcomes: Mapping[str, Outcome]) -> dict[str, Any]:
        provided: dict[str, Any] = {}
        for dep in self.pipeline.modules[name].depends_on:
            if outcomes.get(dep.name, Outcome.FAILED).has_value:
                binding = self.pipeline.bindings[dep.name].result
                provided[dep.name] = binding.decode(self.results.payload(dep.name), dep.name)
        return provided

    def _restore(self, name: str, outcomes: Mapping[str, Outcome]) -> None:
        """Restore the outputs of every module upstream, as in one workspace, in order."""
        for source in self.upstream(name):
            if source not in outcomes:
                continue  # an optional dependency that did not run
            with self._restore_lock:
                if source in self._restored:
                    continue
                patterns = self.pipeline.modules[source].outputs
                count = self.results.restore_outputs(source, self.me.workdir, patterns)
                self._restored.add(source)
            if count:
                self.console.message(
                    f"[worker {self.me.slot}] restored {count} output file(s) of {source}"
                )

    def _publish(self, record: ModuleRecord, attempt: int) -> bool:
        name = record.name
        record.worker, record.slot = self.me.worker, self.me.slot
        mod = self.pipeline.modules[name]
        if record.definition_error:
            self.definition_errors.append(name)
        self.cancel_run(record)  # fail-fast: the cancel record comes before the result
        ran = record.outcome
        record.run_attempt = self.me.run_attempt
        written = publish_result(
            self.store, self.me.keys, record, attempt=attempt, worker=self.me.worker,
            slot=self.me.slot, workdir=self.me.workdir, outputs=mod.outputs,
            failpoint=lambda: failpoint("after-outputs", name), cache=self.results,
            warn=self.console.message,
        )  # fmt: skip
        if record.outcome is not ran:  # packing its outputs failed it: the log says so too
            self.console.module_finished(record)
        self.cancel_run(record)
        with self._restore_lock:
            self._restored.add(name)  # its files are in this workspace: never download them
        return written

    def cancel_run(self, record: ModuleRecord) -> None:
        outcome = record.outcome or Outcome.CANCELLED
        if self.me.keep_going or not outcome.bad or outcome is Outcome.CANCELLED:
            return
        if outcome is Outcome.DEPENDENCY_FAILED or self._cancelled:
            return
        self._cancelled = True
        reason = fail_fast_reason(record.name, outcome, f" on slot {self.me.slot}")
        cancel = CancelRecord(reason=reason, worker=self.me.worker, at=time.time())
        self.store.create(self.me.keys.cancel, encode(cancel))
