"""Carrying out the worker's instructions: one store exchange (or pool start) each.

`Actions.do` takes one instruction of the state machine (`state.WorkerState`) and returns the
event that answers it: a claim read, an acquire won or lost, a result's outcome. It runs in the
worker's loop thread only (see docs/architecture.md, "The worker").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ..model.outcome import ModuleRecord, Outcome
from ..model.pipeline import Pipeline
from ..stores.base import Store, StoreError, StoreUnavailable
from ..ui.console import Console
from . import records
from .events import (
    Acquire,
    Acquired,
    AloneRead,
    Ask,
    CancelRead,
    Capable,
    ClaimRead,
    Ended,
    Event,
    GiveUpSlot,
    GoQuiet,
    Grant,
    HeldBy,
    Instruction,
    ReadAlone,
    ReadCancel,
    ReadClaim,
    ReadRegistration,
    ReadResult,
    Release,
    Resolve,
    ResultRead,
    Say,
    SlotRead,
    Start,
    StopRunning,
)
from .executor import Identity, ModuleExecutor, failpoint
from .knowledge import slot_of
from .messages import Claim, encode
from .results import ResultCache, publish_result

__all__ = ["Actions"]


class Actions:
    """The runtime's hands in the loop thread: store records, the pool, log lines."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        results: ResultCache,
        me: Identity,
        executor: ModuleExecutor,
        console: Console,
        say: Callable[[str], None],
        outcomes: Mapping[str, Outcome],
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.results = results
        self.me = me
        self.executor = executor
        self.console = console
        self.say = say
        self.outcomes = outcomes  # the state machine's, read only
        self._leases: dict[str, list[str]] = {}

    def do(self, ins: Instruction) -> Event | None:
        """Carry out ``ins``; the event that answers it, if any."""
        handler = _HANDLERS[type(ins)]
        return handler(self, ins)

    def _read_result(self, ins: ReadResult) -> Event:
        try:
            outcome: Outcome | None = Outcome(self.results.load(ins.module).outcome)
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            self.say(f"warning: {exc}")
            outcome = None
        except ValueError:
            outcome = None
        return ResultRead(time.monotonic(), ins.module, outcome)

    def _read_claim(self, ins: ReadClaim) -> Event:
        holder = records.read_claim(self.store, self.me.keys, ins.module, ins.attempt)
        return ClaimRead(time.monotonic(), ins.module, ins.attempt, holder)

    def _read_registration(self, ins: ReadRegistration) -> Event:
        reg = records.capabilities_of(self.store, self.me.keys, ins.worker)
        names = self.pipeline.modules
        if reg is None:
            self.say(f"warning: the registration of {ins.worker} cannot be read")
            return Capable(time.monotonic(), ins.worker, frozenset(names), 1)
        offers = records.offered(reg)
        unable = frozenset(n for n, m in names.items() if m.requires.missing(offers))
        return Capable(time.monotonic(), ins.worker, unable, reg.max_parallel)

    def _read_alone(self, ins: ReadAlone) -> Event:
        lease = records.read_alone_lease(self.store, self.me.keys)
        if lease is None:
            return AloneRead(time.monotonic(), None)
        return AloneRead(time.monotonic(), lease.module, lease.attempt, lease.worker)

    def _read_cancel(self, ins: ReadCancel) -> Event | None:
        record = records.read_cancel(self.store, self.me.keys)
        return None if record is None else CancelRead(time.monotonic(), record.reason)

    def _acquire(self, ins: Acquire) -> Event:
        now = time.monotonic
        taken: list[str] | None = []
        if ins.resources:
            taken = records.take_leases(
                self.store, self.me.keys, self.me.worker, ins.module, ins.attempt, ins.resources,
                ins.dead,
            )  # fmt: skip
        if taken is None:
            return Acquired(now(), ins.module, ins.attempt, won=False)
        if ins.claim:
            claim = Claim(
                module=ins.module, attempt=ins.attempt, worker=self.me.worker,
                slot=self.me.slot, at=time.time(), takeover_from=ins.takeover_from,
                deaths=ins.deaths,
            )  # fmt: skip
            won, holder = records.write_claim(self.store, self.me.keys, claim)
            if not won:
                for problem in records.drop_leases(self.store, taken):
                    self.say(problem)
                return Acquired(
                    now(), ins.module, ins.attempt, won=False, holder=holder, lost_claim=True
                )
        self._leases[ins.module] = taken
        return Acquired(now(), ins.module, ins.attempt, won=True)

    def _release(self, ins: Release) -> None:
        for problem in records.drop_leases(self.store, self._leases.pop(ins.module, [])):
            self.say(problem)

    def _start(self, ins: Start) -> None:
        failpoint("after-claim", ins.module)
        outcomes = self.outcomes
        wanted = [d.name for d in self.pipeline.modules[ins.module].depends_on]
        wanted += self.executor.upstream(ins.module)
        self.executor.start(
            ins.module, ins.attempt, {n: outcomes[n] for n in wanted if n in outcomes}
        )

    def _resolve(self, ins: Resolve) -> Event:
        """Record the outcome of a module this worker holds that will not run."""
        record = ModuleRecord(
            ins.module, outcome=ins.outcome, worker=self.me.worker, slot=self.me.slot
        )
        if ins.outcome is Outcome.SKIPPED:
            record.skip_reason = ins.reason
        else:
            record.error = ins.reason
        self.console.module_finished(record)
        self.executor.cancel_run(record)  # failed here (its workers died): fail-fast
        record.run_attempt = self.me.run_attempt
        written = publish_result(
            self.store, self.me.keys, record, attempt=ins.attempt, worker=self.me.worker,
            slot=self.me.slot, workdir=self.me.workdir, cache=self.results,
        )  # fmt: skip
        return _ended(ins.module, ins.attempt, ins.outcome, written)

    def _ask(self, ins: Ask) -> None:
        records.write_request(self.store, self.me.keys, ins.module, self.me.worker, self.me.slot)

    def _grant(self, ins: Grant) -> Event:
        slot = slot_of(ins.worker)
        claim = Claim(
            module=ins.module, attempt=1, worker=ins.worker, slot=-1 if slot is None else slot,
            at=time.time(), granted_by=self.me.worker,
        )  # fmt: skip
        # only this slot's worker writes attempt 1 claims of its modules: no race to settle
        if self.store.create(self.me.keys.claim(ins.module, 1), encode(claim), sole=True):
            self.say(f"{ins.module} handed to {ins.worker}, which asked for it")
            return ClaimRead(time.monotonic(), ins.module, 1, HeldBy(ins.worker))
        holder = records.read_claim(self.store, self.me.keys, ins.module, 1)
        return ClaimRead(time.monotonic(), ins.module, 1, holder)

    def _go_quiet(self, ins: GoQuiet) -> None:
        records.write_quiet(self.store, self.me.keys, ins.module, ins.attempt, self.me.worker)

    def _give_up_slot(self, ins: GiveUpSlot) -> Event:
        record = records.hold_slot(self.store, self.me.keys, ins.slot, self.me.worker, True)
        if record is None:
            self.say(f"warning: the record of slot {ins.slot} cannot be read; reading it again")
            return SlotRead(time.monotonic(), ins.slot, None)
        if not record.given_up:
            self.say(f"slot {ins.slot} is served by {record.worker}: waiting for it")
        return SlotRead(time.monotonic(), ins.slot, record.worker, record.given_up)

    def _stop_running(self, ins: StopRunning) -> None:
        self.executor.stop_all(ins.reason, ins.hard)

    def _say_line(self, ins: Say) -> None:
        self.say(ins.text)


def _ended(module: str, attempt: int, outcome: Outcome, written: bool) -> Event:
    return Ended(time.monotonic(), module, attempt, outcome, written)


_HANDLERS: dict[type, Callable[[Actions, Any], Event | None]] = {
    ReadResult: Actions._read_result,
    ReadClaim: Actions._read_claim,
    ReadRegistration: Actions._read_registration,
    ReadAlone: Actions._read_alone,
    ReadCancel: Actions._read_cancel,
    Acquire: Actions._acquire,
    Release: Actions._release,
    Start: Actions._start,
    Resolve: Actions._resolve,
    Ask: Actions._ask,
    Grant: Actions._grant,
    GoQuiet: Actions._go_quiet,
    GiveUpSlot: Actions._give_up_slot,
    StopRunning: Actions._stop_running,
    Say: Actions._say_line,
}
