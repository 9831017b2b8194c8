"""The worker as a pure state machine: events in, instructions out (docs/architecture.md).

`WorkerState.handle` takes one event (see `events`), updates what this worker knows about the
run and returns what the runtime (`worker.Worker`) must do. It never touches a store, a thread
or a clock: time comes in the events. Each module is in one phase; `knowledge.TRANSITIONS`
lists the moves allowed, and every move goes through `Knowledge.move`, which checks it.

What a module's phase (`knowledge.Phase`) means on this worker:

- ``waiting``: some dependency has no known outcome yet;
- ``ready``: its dependencies ended; it is ours to start, or someone else's that we watch;
- ``asked``: we asked its slot's worker for it (a steal request) and wait for an answer;
- ``acquiring``: we are taking its leases and claim;
- ``quieting``: we hold it and it must run alone: we wait until the others are quiet;
- ``running``: it runs (or its outcome is being published) here;
- ``done``: its result is in the store and nothing of it runs here.

Stealing (`stealing`), the run-alone protocol (`alone`) and cancel and stop (`stopping`) are
parts of their own (their tests are in tests/test_state.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..execution.policy import cannot_run, dependency_verdict
from ..model.module import Module
from ..model.outcome import Outcome
from . import alone, slots, stealing, stopping
from .events import (
    Acquire,
    Acquired,
    AloneRead,
    CancelRead,
    Capable,
    ClaimRead,
    Dead,
    Ended,
    Event,
    Finish,
    HeldBy,
    Instruction,
    Listed,
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
    Started,
    Stop,
    Tick,
)
from .knowledge import HELD, TRANSITIONS, ClaimInfo, Config, Hold, Knowledge, Phase, PlanView
from .liveness import EVIDENCE

__all__ = ["TRANSITIONS", "Config", "Phase", "PlanView", "WorkerState"]


@dataclass
class WorkerState(Knowledge):
    """Everything one worker knows about its run and how it reacts; change it via `handle`."""

    # ------------------------------------------------------------------ entry point

    def handle(self, *events: Event) -> list[Instruction]:
        """Take events (in order); return the instructions they lead to, in order.

        The machine decides what to do next once, after the last event: a batch of events
        that came together costs one decision.
        """
        out: list[Instruction] = []
        if self.over or not events:
            return out
        for event in events:
            self._take(event, out)
        self._act(max(e.now for e in events), out)
        return out

    def _take(self, event: Event, out: list[Instruction]) -> None:
        match event:
            case Started(now=now):
                self.started_at = now
                for name, outcome in self.plan.carried.items():
                    if name in self.phase:  # settled in an earlier CI attempt
                        self.present.add(name)
                        self._outcome(name, outcome, now)
                for name in self.plan.order:
                    if self.missing[name] == 0 and self.phase[name] is Phase.WAITING:
                        self._become_ready(name, now)
            case Listed():
                self._listed(event, out)
            case Dead(dead=dead):
                if dead - self.dead:
                    self.dead = dead
                    self._want_claims(event.now, out)  # whose claims to take over?
                self.dead = dead
            case Capable(worker=worker, unable=unable, max_parallel=parallel):
                self.unable[worker] = unable
                self.parallel[worker] = parallel
            case ResultRead(module=module, outcome=outcome):
                self._result_read(module, outcome, event.now, out)
            case ClaimRead():
                self._claim_read(event)
            case Acquired():
                self._acquired(event, out)
            case AloneRead():
                alone.read(self, event)
            case SlotRead():
                slots.read(self, event)
            case CancelRead(reason=reason):
                stopping.cancelled(self, reason, out)
            case Ended():
                self._ended(event, out)
            case Stop(hard=hard):
                stopping.stopped(self, hard, out)
            case Tick():
                pass

    # ------------------------------------------------------------------ observations

    def _listed(self, event: Listed, out: list[Instruction]) -> None:
        keys = event.keys
        new = [k for k in keys if k not in self.seen]
        self.seen.update(new)
        results_seen: list[str] = []
        for key in new:
            parsed = self.keys.parse(key)
            if parsed is None:
                continue
            kind = parsed.kind
            if kind == "result":
                results_seen.append(parsed.module)
            elif kind == "marker":
                self.marked.add(parsed.module)
            elif kind == "claim":
                self._claim_listed(parsed.module, parsed.number, event.now)
            elif kind == "request":
                self.requests.setdefault(parsed.module, []).append(parsed.worker)
            elif kind == "worker":
                self.registered.setdefault(parsed.worker, event.now)
                if parsed.worker != self.config.worker and self.plan.unable:
                    out.append(ReadRegistration(parsed.worker))  # who can serve what we cannot?
            elif kind == "done":
                self.finished.add(parsed.worker)
            elif kind == "quiet":
                self.alone.quiet.add((parsed.module, parsed.number, parsed.worker))
            elif kind == "cancel" and self.cancel is None:
                out.append(ReadCancel())
        for module in results_seen:
            self._result_listed(module, event.now, out)
        if event.whole:
            self.listings += 1
            alone.listed(self, keys, out)
            self._want_claims(event.now, out)

    def _result_listed(self, module: str, now: float, out: list[Instruction]) -> None:
        if module not in self.phase or module in self.present:
            return
        self.present.add(module)
        if module in self.marked:
            out.append(ReadResult(module))  # why did it not succeed?
        else:
            self._outcome(module, Outcome.SUCCEEDED, now)

    def _result_read(
        self, module: str, outcome: Outcome | None, now: float, out: list[Instruction]
    ) -> None:
        if outcome is None:
            outcome = Outcome.FAILED
            out.append(Say(f"warning: the result of {module} cannot be read; counted as failed"))
        self._outcome(module, outcome, now)
        if outcome.bad and self.cancel is None:
            out.append(ReadCancel())  # fail-fast writes the cancel record before the result

    def _outcome(self, module: str, outcome: Outcome, now: float) -> None:
        if module in self.outcomes:
            return
        self.outcomes[module] = outcome
        if self.phase[module] not in HELD:
            self.move(module, Phase.DONE)
        for dependent in self.dependents.get(module, ()):
            self.missing[dependent] -= 1
            if self.missing[dependent] == 0 and self.phase[dependent] is Phase.WAITING:
                self._become_ready(dependent, now)

    def _become_ready(self, name: str, now: float) -> None:
        self.move(name, Phase.READY)
        self.ready_since[name] = now

    def _claim_listed(self, module: str, attempt: int, now: float) -> None:
        known = self.claims.get(module)
        if known is None or attempt > known.attempt:
            self.claims[module] = ClaimInfo(attempt, now)

    def _want_claims(self, now: float, out: list[Instruction]) -> None:
        """Read the claims whose holder matters: someone died, we asked, or it is old."""
        for name in self.ready:
            info = self.claims.get(name)
            if info is None or info.read or info.reading or name in self.outcomes:
                continue
            if info.unreadable_since is not None:  # read again on every whole listing
                info.reading = True
                out.append(ReadClaim(name, info.attempt))
                continue
            if (
                self.dead
                or name in self.asked
                or now - info.seen_at > self.config.heartbeat_timeout
            ):
                info.reading = True
                out.append(ReadClaim(name, info.attempt))

    def _claim_read(self, event: ClaimRead) -> None:
        info = self.claims.get(event.module)
        if info is None or event.attempt > info.attempt:
            info = self.claims[event.module] = ClaimInfo(event.attempt, event.now)
        if event.attempt != info.attempt:
            return
        info.reading = False
        if event.holder is not None:
            info.holder, info.read, info.unreadable_since = event.holder, True, None
        elif info.unreadable_since is None:  # read again at the next listing, up to a bound
            info.unreadable_since = event.now

    # ------------------------------------------------------------------ holding and running

    def _acquired(self, event: Acquired, out: list[Instruction]) -> None:
        name = event.module
        hold = self.holds.get(name)
        if hold is None or self.phase[name] is not Phase.ACQUIRING:
            return
        if not event.won:
            del self.holds[name]
            if event.holder is not None:
                self.claims[name] = ClaimInfo(event.attempt, event.now, event.holder, True)
            elif event.lost_claim:  # someone's claim we could not read yet: read it again
                self.claims[name] = ClaimInfo(event.attempt, event.now, unreadable_since=event.now)
            else:  # a lease is held elsewhere: try again a little later
                self.lease_retry[name] = event.now + self.config.lease_retry
            self.let_go(name, event.now)
            return
        self.claims[name] = ClaimInfo(
            event.attempt, event.now, HeldBy(self.config.worker, hold.deaths), True
        )
        if hold.takeover_from:
            out.append(
                Say(f"taking over {name} from {hold.takeover_from} (attempt {hold.attempt})")
            )
        if not stopping.before_start(self, name, hold, event.now, out):
            return  # a stop came since it was chosen
        if hold.resolve is not None:
            self.move(name, Phase.RUNNING)
            out.append(Resolve(name, hold.attempt, *hold.resolve))
        elif self.plan.modules[name].constraints.alone:
            self.move(name, Phase.QUIETING)
            self.alone.waiting = (name, hold.attempt, self.listings + 2)
        else:
            self.move(name, Phase.RUNNING)
            out.append(Start(name, hold.attempt))

    def _ended(self, event: Ended, out: list[Instruction]) -> None:
        name = event.module
        if name not in self.holds or self.phase[name] is not Phase.RUNNING:
            return
        hold = self.holds.pop(name)
        if self.plan.modules[name].constraints:
            out.append(Release(name))
        if event.outcome is None:
            out.append(Say(f"handing back {name} (stopped)"))
            self.let_go(name, event.now)
            return
        if not event.written:  # the other attempt's result tells the outcome, when listed
            out.append(Say(f"{name}: a result of another attempt was first; this one is dropped"))
            self.superseded.setdefault(name, event.now)
            self.let_go(name, event.now)
            return
        if event.outcome is Outcome.FAILED or (
            hold.resolve is None and event.outcome is Outcome.TIMED_OUT
        ):
            self.ran_bad.append(name)  # a module ran here and failed (or was failed here)
        self.present.add(name)
        self._outcome(name, event.outcome, event.now)
        if self.phase[name] is not Phase.DONE:
            self.move(name, Phase.DONE)

    # ------------------------------------------------------------------ deciding

    def _act(self, now: float, out: list[Instruction]) -> None:
        if self.started_at is None or self.over:
            return
        if len(self.outcomes) == len(self.phase) and not self.holds:
            self._finish(out)
            return
        if self.draining:
            alone.give_up(self, now, out)
            if not self.holds:
                self._finish(out)
            return
        if self.alone.waiting is not None:
            alone.start_when_quiet(self, now, out)
        elif alone.paused(self):
            alone.go_quiet(self, out)
        else:
            for name in sorted(self.ready, key=self.plan.rank.__getitem__):
                self._consider(name, now, out)
                if self.alone.waiting is not None:
                    break
        self._log_waits(now, out)

    def _consider(self, name: str, now: float, out: list[Instruction]) -> None:
        if name in self.present:
            return  # its result is in the store and being read: nothing to run or take over
        if self.lease_retry and now < self.lease_retry.get(name, 0.0):
            return
        if name in self.superseded:
            self._await_other_result(name, now, out)
            return
        hold = self._holding(name, now, out)
        if hold is None:
            if self.phase[name] is Phase.ASKED:
                stealing.expire(self, name, now)
            elif stealing.should_ask(self, name, now):
                stealing.ask(self, name, now, out)
            self._check_servable(name, now, out)
            return
        mod = self.plan.modules[name]
        if hold.deaths >= self.config.max_deaths:
            reason = f"its worker died while running it {hold.deaths} times"
            hold.resolve = (Outcome.FAILED, reason)
        else:
            verdict = dependency_verdict({d: self.outcomes[d] for d in self.plan.required[name]})
            cancelled = None if self.config.keep_going else self.cancel
            hold.resolve = cannot_run(mod, verdict, cancelled)
        if hold.resolve is None:
            if hold.attempt == 1 and not hold.claim and self.jumps_ahead(name, now):
                return  # an earlier module of our slot is about to be ready
            if self._busy(mod) or name in self.plan.unable:
                if (
                    hold.attempt == 1
                    and not hold.claim
                    and self.plan.owner[name] == self.config.slot
                ):
                    stealing.grant(self, name, now, out)
                if name in self.plan.unable:
                    self._check_servable(name, now, out)
                return
        self.holds[name] = hold
        self.move(name, Phase.ACQUIRING)
        resources = () if hold.resolve is not None else mod.constraints.resources
        if hold.resolve is not None and not hold.claim:
            self._acquired(Acquired(now, name, hold.attempt, True), out)
            return
        out.append(
            Acquire(name, hold.attempt, resources, hold.claim, hold.takeover_from, hold.deaths,
                    self.dead)
        )  # fmt: skip

    def _await_other_result(self, name: str, now: float, out: list[Instruction]) -> None:
        """Our result lost to another attempt's: wait (bounded) for that one to be listed."""
        if now - self.superseded[name] <= self.config.heartbeat_timeout:
            return
        out.append(
            Say(
                f"warning: {name}'s result key is taken, but no result of it can be read "
                "(an upload that never finished?); counting it as failed here"
            )
        )
        self.ran_bad.append(name)
        self._outcome(name, Outcome.FAILED, now)  # known here only; the summary shows it missing

    def _busy(self, mod: Module) -> bool:
        held = [n for n in self.holds if not self.resolving(n)]
        if len(held) >= self.config.jobs:
            return True
        if any(self.plan.modules[n].constraints.alone for n in held):
            return True
        return mod.constraints.alone and bool(held)

    def _holding(self, name: str, now: float, out: list[Instruction]) -> Hold | None:
        """Whether this worker may run (or resolve) ``name`` now, and as which attempt.

        Attempt 1 belongs to the planned slot without a record, until that slot's worker
        grants it to a worker that asked; later attempts are claimed explicitly, taking over
        from a dead holder or from a slot nobody came for.
        """
        info = self.claims.get(name)
        if info is None:
            slot = self.plan.owner[name]
            if slot == self.config.slot:  # contested: claims arbitrate with who gave it up
                return Hold(2, claim=True) if self.config.contested else Hold(1, claim=False)
            owner = self.slot_worker(slot)
            if owner is None:
                late = self.started_at is not None and (
                    now - self.started_at > self.config.heartbeat_timeout
                )
                if late and slots.given_up(self, slot, now, out):
                    return Hold(2, claim=True, takeover_from=f"slot {slot}, which no worker serves")
                return None
            if owner in self.dead:
                return Hold(
                    2, claim=True, takeover_from=owner, deaths=self._died_running(name, owner)
                )
            return None
        if not info.read:
            if info.reading or info.unreadable_since is None:
                return None  # its answer decides
            if not self._holder_gone(name, info, now, out):
                return None
            return Hold(info.attempt + 1, claim=True, takeover_from="an unreadable claim")
        holder = info.holder
        if holder is not None and holder.worker == self.config.worker:
            return Hold(info.attempt, claim=False, deaths=holder.deaths)
        if not self._holder_gone(name, info, now, out):
            return None
        who = holder.worker if holder is not None else "an unreadable claim"
        deaths = (holder.deaths + 1) if holder is not None else 0
        return Hold(info.attempt + 1, claim=True, takeover_from=who, deaths=deaths)

    def _holder_gone(self, name: str, info: ClaimInfo, now: float, out: list[Instruction]) -> bool:
        holder = info.holder
        if holder is not None and holder.worker in self.dead:
            return True
        if holder is not None and holder.worker in self.registered:
            return False
        since = info.seen_at if info.unreadable_since is None else info.unreadable_since
        if now - since <= self.config.heartbeat_timeout:
            return False
        # evidence, not just time (a flaky store can delay our listings and reads for longer):
        # EVIDENCE more whole listings of our own must still find no registration of the
        # holder, and re-reads (one per listing) still no readable claim
        if info.doubted_at is None:
            info.doubted_at = self.listings
        if self.listings - info.doubted_at < EVIDENCE:
            return False
        if not info.warned:
            info.warned = True
            why = (
                "cannot be read"
                if holder is None
                else f"names {holder.worker}, which never registered"
            )
            out.append(Say(f"warning: claim {info.attempt} of {name} {why}; taking it for dead"))
        return True

    def _died_running(self, name: str, worker: str) -> int:
        """1 if dead ``worker`` plausibly ran its planned ``name`` (one of its first ready)."""
        slot = self.plan.owner[name]
        places = self.parallel.get(worker, 1)
        first = [
            n for n in self.plan.slot_order.get(slot, ())
            if n not in self.outcomes and n not in self.claims and self.missing[n] == 0
        ][:places]  # fmt: skip
        return 1 if name in first else 0

    def _check_servable(self, name: str, now: float, out: list[Instruction]) -> None:
        """Fail a ready module that no live worker can serve, after a bound (with a line)."""
        if name not in self.plan.unable:
            return
        live = self.live_workers()
        if any(name not in self.unable.get(w, frozenset({name})) for w in live):
            self.unservable_since.pop(name, None)
            return
        since = self.unservable_since.setdefault(name, now)
        if now - since <= self.config.unservable_timeout:
            return
        info = self.claims.get(name)
        attempt = (info.attempt if info is not None else 1) + 1
        reason = "no live worker can serve it (its requirements match none of them)"
        self.holds[name] = Hold(attempt, claim=True, resolve=(Outcome.FAILED, reason))
        if self.phase[name] is Phase.ASKED:
            self.move(name, Phase.READY)
        self.move(name, Phase.ACQUIRING)
        out.append(Acquire(name, attempt, (), True, None, 0, self.dead))

    def _log_waits(self, now: float, out: list[Instruction]) -> None:
        if now - self.last_log < self.config.log_every:
            return
        self.last_log = now
        waiting = [n for n in sorted(self.ready, key=self.plan.rank.__getitem__)][:3]
        if not waiting or self.holds:
            return
        parts = []
        for name in waiting:
            info = self.claims.get(name)
            who = (
                info.holder.worker
                if info and info.holder
                else self.slot_worker(self.plan.owner[name])
            )
            parts.append(f"{name} from {who or f'slot {self.plan.owner[name]} (no worker yet)'}")
        out.append(Say(f"waiting for {', '.join(parts)}"))

    def _finish(self, out: list[Instruction]) -> None:
        self.over = True
        out.append(Finish(stopping.exit_code(self, out)))
