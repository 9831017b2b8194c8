"""The worker's state machine, driven by events alone: no store, no thread, no sleep.

Each test builds one worker's `WorkerState` over a tiny plan, feeds it what the runtime would
observe (listings, records read, modules ended, signals, the clock) and checks the
instructions it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pytest

from ciflow.distributed.events import (
    Acquire,
    Acquired,
    AloneRead,
    Ask,
    CancelRead,
    Capable,
    ClaimRead,
    Dead,
    Ended,
    Finish,
    GiveUpSlot,
    GoQuiet,
    Grant,
    HeldBy,
    Instruction,
    Listed,
    ReadAlone,
    ReadCancel,
    ReadClaim,
    ReadResult,
    Release,
    Resolve,
    ResultRead,
    Say,
    SlotRead,
    Start,
    Started,
    Stop,
    StopRunning,
    Tick,
)
from ciflow.distributed.keys import RunKeys, lease_resource
from ciflow.distributed.knowledge import Config, Phase, PlanView
from ciflow.distributed.liveness import EVIDENCE
from ciflow.distributed.state import WorkerState
from ciflow.model.constraints import ALONE
from ciflow.model.module import Module
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import Pipeline
from ciflow.model.requirements import Requires

K = RunKeys("r")
ME, OTHER = "s0-host-1", "s1-host-2"


def noop() -> None:
    return None


def machine(
    mods: Sequence[Module],
    owner: dict[str, int],
    *,
    slot: int = 0,
    worker: str = ME,
    unable: frozenset[str] = frozenset(),
    **config: object,
) -> WorkerState:
    """The state of ``worker`` (serving ``slot``) over ``mods`` placed by ``owner``."""
    pipeline = Pipeline(mods)
    slot_order: dict[int, list[str]] = {}
    for name in pipeline.order:
        slot_order.setdefault(owner[name], []).append(name)
    mine = [n for n in pipeline.order if owner[n] == slot]
    view = PlanView(
        modules=pipeline.modules,
        owner=owner,
        order=mine + [n for n in pipeline.order if owner[n] != slot],
        slot_order=slot_order,
        unable=unable,
    )
    cfg = Config(worker=worker, slot=slot, **config)  # type: ignore[arg-type]
    return WorkerState(plan=view, config=cfg, keys=K)


T = TypeVar("T")


def of(kind: type[T], out: Sequence[Instruction]) -> list[T]:
    return [i for i in out if isinstance(i, kind)]


def registered(*workers: str) -> list[str]:
    return [K.worker(w) for w in workers]


def acquire_and_start(st: WorkerState, name: str, now: float) -> list[Instruction]:
    """Answer the `Acquire` for ``name`` as won; returns what follows (a `Start`)."""
    return st.handle(Acquired(now, name, 1, won=True))


# --------------------------------------------------------------------- running its own slot


def test_own_modules_run_in_plan_order_and_dependents_follow() -> None:
    a = Module(noop, name="a")
    b = Module(noop, name="b", depends_on=[a])
    st = machine([a, b], {"a": 0, "b": 0})
    out = st.handle(Started(0.0))
    assert of(Acquire, out) == [Acquire("a", 1, (), False, None, 0, frozenset())]
    assert st.phase["a"] is Phase.ACQUIRING and st.phase["b"] is Phase.WAITING
    assert of(Start, acquire_and_start(st, "a", 0.1)) == [Start("a", 1)]
    out = st.handle(Ended(0.2, "a", 1, Outcome.SUCCEEDED))
    assert st.phase["a"] is Phase.DONE
    assert of(Acquire, out)[0].module == "b"
    assert of(Start, acquire_and_start(st, "b", 0.3)) == [Start("b", 1)]
    assert of(Finish, st.handle(Ended(0.4, "b", 1, Outcome.SUCCEEDED))) == [Finish(0)]
    assert st.over


def test_a_result_listed_by_another_worker_makes_dependents_ready() -> None:
    a = Module(noop, name="a")
    b = Module(noop, name="b", depends_on=[a])
    st = machine([a, b], {"a": 1, "b": 0})
    assert not of(Acquire, st.handle(Started(0.0)))  # a is slot 1's: nothing to do yet
    out = st.handle(Listed(0.1, [K.result("a")], whole=False))
    assert st.outcomes["a"] is Outcome.SUCCEEDED  # no marker: a success, nothing downloaded
    assert not of(ReadResult, out)
    assert of(Acquire, out)[0].module == "b"


def test_a_marked_result_is_read_and_its_failure_resolves_dependents() -> None:
    a = Module(noop, name="a")
    b = Module(noop, name="b", depends_on=[a])
    st = machine([a, b], {"a": 1, "b": 0})
    st.handle(Started(0.0))
    out = st.handle(Listed(0.1, [K.marker("a"), K.result("a")], whole=False))
    assert of(ReadResult, out) == [ReadResult("a")]  # only a marked result is downloaded
    st.handle(Tick(0.2))
    assert "a" not in st.outcomes  # marked: not known until read
    out = st.handle(ResultRead(0.3, "a", Outcome.FAILED))
    assert ReadCancel() in out  # fail-fast writes a cancel record before the result
    resolve = of(Resolve, out)
    assert resolve and resolve[0].module == "b" and resolve[0].outcome is Outcome.DEPENDENCY_FAILED
    out = st.handle(Ended(0.4, "b", 1, Outcome.DEPENDENCY_FAILED))
    assert of(Finish, out) == [Finish(1)]  # it ran nothing that failed, but the run failed
    assert any("2 failed module(s) this worker did not run (a, b)" in s.text for s in of(Say, out))


def test_an_unreadable_result_counts_as_failed_with_a_warning() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1})
    st.handle(Started(0.0))
    st.handle(Listed(0.1, [K.marker("a"), K.result("a")], whole=False))
    out = st.handle(ResultRead(0.2, "a", None))
    assert st.outcomes["a"] is Outcome.FAILED
    assert any("cannot be read" in s.text for s in of(Say, out))


# --------------------------------------------------------------------- stealing and hand-over


def _two_ready_on_slot_0() -> WorkerState:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, slot=1, worker=OTHER, steal_delay=0.1)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    return st


def test_an_idle_worker_asks_for_the_module_a_busy_slot_has_not_started() -> None:
    st = _two_ready_on_slot_0()
    assert not of(Ask, st.handle(Tick(0.05)))  # not ready long enough
    out = st.handle(Tick(0.2))
    assert of(Ask, out) == [Ask("b")]  # a is first on slot 0, so slot 0 is busy with it
    assert st.phase["b"] is Phase.ASKED
    assert not of(Ask, st.handle(Tick(0.3)))  # asked once


def test_a_granted_claim_is_read_and_the_stealer_runs_attempt_1() -> None:
    st = _two_ready_on_slot_0()
    st.handle(Tick(0.2))
    out = st.handle(Listed(0.3, [*registered(ME, OTHER), K.claim("b", 1)], whole=True))
    assert of(ReadClaim, out) == [ReadClaim("b", 1)]  # we asked: whose is it?
    out = st.handle(ClaimRead(0.31, "b", 1, HeldBy(OTHER)))
    assert of(Acquire, out) == [Acquire("b", 1, (), False, None, 0, frozenset())]
    assert of(Start, acquire_and_start(st, "b", 0.32)) == [Start("b", 1)]


def test_an_unanswered_request_expires_and_is_not_repeated() -> None:
    st = _two_ready_on_slot_0()
    st.handle(Tick(0.2))
    st.handle(Tick(0.2 + st.config.ask_expiry + 0.1))
    assert st.phase["b"] is Phase.READY
    assert not of(Ask, st.handle(Tick(10.0)))


def test_the_slot_worker_grants_a_waiting_module_to_the_first_live_asker() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, jobs=1)
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)  # a runs; b waits for the only place
    out = st.handle(Listed(0.5, [*registered(ME, OTHER), K.request("b", OTHER)], whole=True))
    assert of(Grant, out) == [Grant("b", OTHER)]
    out = st.handle(ClaimRead(0.6, "b", 1, HeldBy(OTHER)))
    out += st.handle(Ended(0.7, "a", 1, Outcome.SUCCEEDED))
    assert not of(Acquire, out) and not of(Grant, out)  # b is the asker's now
    out = st.handle(Listed(0.8, [K.result("b")], whole=False))
    assert of(Finish, out) == [Finish(0)]


def test_a_dead_asker_gets_nothing() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, jobs=1)
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    st.handle(Dead(0.4, frozenset({OTHER})))
    out = st.handle(Listed(0.5, [*registered(ME, OTHER), K.request("b", OTHER)], whole=True))
    assert not of(Grant, out)


# --------------------------------------------------------------------- takeover and deaths


def test_a_dead_slot_workers_module_is_taken_over_as_attempt_2() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1})
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    assert not of(Acquire, st.handle(Tick(1.0)))  # slot 1 is served: a is its
    out = st.handle(Dead(2.0, frozenset({OTHER})))
    acquire = of(Acquire, out)
    assert acquire == [Acquire("a", 2, (), True, OTHER, 1, frozenset({OTHER}))]
    out = st.handle(Acquired(2.1, "a", 2, won=True))
    assert of(Start, out) == [Start("a", 2)]
    assert any(f"taking over a from {OTHER}" in s.text for s in of(Say, out))


def test_a_module_whose_result_is_being_read_is_not_taken_over_from_its_gone_worker() -> None:
    """A finished worker's last (marked) result and its done record come in one listing: the
    result's outcome is read, not raced by a takeover of a module that has its result."""
    a = Module(noop, name="a")
    st = machine([a], {"a": 1})
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    out = st.handle(
        Listed(1.0, [K.marker("a"), K.result("a"), K.done_of(OTHER)], whole=True),
        Dead(1.0, frozenset({OTHER})),
    )
    assert of(ReadResult, out) == [ReadResult("a")] and not of(Acquire, out)
    out = st.handle(ResultRead(1.1, "a", Outcome.CANCELLED))
    assert not of(Acquire, out) and of(Finish, out) == [Finish(1)]


def test_a_lost_claim_race_remembers_the_winner_and_waits() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1})
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER, "s2-host-3"), whole=True))
    st.handle(Dead(2.0, frozenset({OTHER})))
    out = st.handle(Acquired(2.1, "a", 2, won=False, holder=HeldBy("s2-host-3", 1)))
    assert st.phase["a"] is Phase.READY and not of(Acquire, out)
    assert st.claims["a"].holder == HeldBy("s2-host-3", 1)


def test_a_module_whose_workers_keep_dying_fails_after_max_deaths() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1}, max_deaths=2)
    st.handle(Started(0.0))
    dead = "s2-host-3"
    st.handle(Listed(0.0, [*registered(ME, OTHER, dead), K.claim("a", 3)], whole=True))
    out = st.handle(Dead(1.0, frozenset({OTHER, dead})))
    assert of(ReadClaim, out) == [ReadClaim("a", 3)]  # someone died: whose claims are they?
    out = st.handle(ClaimRead(1.1, "a", 3, HeldBy(dead, deaths=1)))
    assert of(Acquire, out) == [Acquire("a", 4, (), True, dead, 2, frozenset({OTHER, dead}))]
    out = st.handle(Acquired(1.2, "a", 4, won=True))
    assert of(Resolve, out) == [
        Resolve("a", 4, Outcome.FAILED, "its worker died while running it 2 times")
    ]
    assert of(Start, out) == []
    assert of(Finish, st.handle(Ended(1.3, "a", 4, Outcome.FAILED))) == [Finish(1)]


def test_a_claim_that_stays_unreadable_is_taken_for_dead_after_the_timeout() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, [*registered(ME, OTHER), K.claim("a", 2)], whole=True))
    assert of(ReadClaim, st.handle(Listed(11.0, [], whole=True))) == [ReadClaim("a", 2)]
    out = st.handle(ClaimRead(11.1, "a", 2, None))  # unreadable once: no verdict yet
    assert not of(Acquire, out)
    assert of(ReadClaim, st.handle(Listed(15.0, [], whole=True))) == [ReadClaim("a", 2)]
    assert not of(Acquire, st.handle(ClaimRead(15.1, "a", 2, None)))
    st.handle(Listed(22.0, [], whole=True))
    out = st.handle(ClaimRead(22.1, "a", 2, None))  # unreadable for longer than the timeout,
    assert not of(Acquire, out)  # but time alone is no evidence: our listings may lag
    for n in range(EVIDENCE):  # each whole listing reads it again
        assert of(ReadClaim, st.handle(Listed(23.0 + n, [], whole=True))) == [ReadClaim("a", 2)]
        out = st.handle(ClaimRead(23.1 + n, "a", 2, None))
        assert bool(of(Acquire, out)) == (n == EVIDENCE - 1)
    assert any("cannot be read" in s.text for s in of(Say, out))
    assert [(i.module, i.attempt, i.claim) for i in of(Acquire, out)] == [("a", 3, True)]


def test_a_claim_lost_to_a_record_not_yet_readable_is_read_again_not_run_twice() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER, "s2-host-3"), whole=True))
    st.handle(Dead(1.0, frozenset({OTHER})))
    out = st.handle(Acquired(1.1, "a", 2, won=False, holder=None, lost_claim=True))
    assert not of(Acquire, out)  # not attempt 2 again, and not attempt 3
    out = st.handle(Listed(1.5, [K.claim("a", 2)], whole=True))
    assert of(ReadClaim, out) == [ReadClaim("a", 2)]
    assert not of(Acquire, st.handle(ClaimRead(1.6, "a", 2, HeldBy("s2-host-3"))))


@pytest.mark.parametrize(("holder", "why"), [(HeldBy("s5-ghost-9"), "never registered")])
def test_an_orphaned_or_unreadable_claim_is_taken_for_dead_after_the_timeout(
    holder: HeldBy | None, why: str
) -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, [*registered(ME, OTHER), K.claim("a", 2)], whole=True))
    assert not of(ReadClaim, st.handle(Listed(5.0, [], whole=True)))  # young: not read
    out = st.handle(Listed(11.0, [], whole=True))
    assert of(ReadClaim, out) == [ReadClaim("a", 2)]
    out = st.handle(ClaimRead(11.1, "a", 2, holder))
    assert not of(Acquire, out)  # the timeout passed: now our listings gather evidence
    for n in range(EVIDENCE):
        out = st.handle(Listed(12.0 + n, [], whole=True))
        assert bool(of(Acquire, out)) == (n == EVIDENCE - 1)
    assert any(why in s.text for s in of(Say, out))
    assert [(i.module, i.attempt, i.claim) for i in of(Acquire, out)] == [("a", 3, True)]


def test_a_claim_whose_holder_our_slow_listings_have_not_shown_yet_is_not_taken_over() -> None:
    """A flaky store delays our listings: the claim of a worker that registered late is
    learnt first (our own claim lost to it), its registration only listings later."""
    a = Module(noop, name="a")
    st = machine([a], {"a": 1}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    st.handle(Dead(1.0, frozenset({OTHER})))
    out = st.handle(Acquired(1.1, "a", 2, won=False, holder=HeldBy("s2-late-3")))
    out = st.handle(Listed(20.0, [K.claim("a", 2)], whole=True))  # long after the timeout
    assert not of(Acquire, out)
    out = st.handle(Listed(21.0, registered("s2-late-3"), whole=True))  # there it is
    for n in range(2 * EVIDENCE):
        out += st.handle(Listed(22.0 + n, [], whole=True))
    assert not of(Acquire, out)  # its holder is registered and not dead: never run twice


def test_a_slot_no_worker_serves_is_taken_over_after_the_heartbeat_timeout() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 3}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    assert not of(Acquire, st.handle(Tick(9.0)))
    out = st.handle(Tick(10.5))  # first the slot is given up: its worker may only be late
    assert of(GiveUpSlot, out) == [GiveUpSlot(3)] and not of(Acquire, out)
    assert not of(GiveUpSlot, st.handle(Tick(10.6)))  # asked once
    out = st.handle(SlotRead(10.7, 3, ME, given_up=True))
    assert [(i.attempt, i.takeover_from) for i in of(Acquire, out)] == [
        (2, "slot 3, which no worker serves")
    ]


def test_a_late_slot_worker_that_recorded_its_slot_first_is_waited_for_not_raced() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 3}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Tick(10.5))
    out = st.handle(SlotRead(10.7, 3, "s3-late-1"))  # its worker came first
    assert not of(Acquire, out)
    assert st.slot_worker(3) == "s3-late-1"  # watched like any worker from now on
    assert not of(Acquire, st.handle(Tick(15.0)))
    out = st.handle(Dead(30.0, frozenset({"s3-late-1"})))
    assert [(i.attempt, i.takeover_from) for i in of(Acquire, out)] == [(2, "s3-late-1")]


def test_an_unreadable_slot_record_is_read_again_never_guessed() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 3}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    st.handle(Tick(10.5))
    assert not of(Acquire, st.handle(SlotRead(10.6, 3, None)))
    assert not of(GiveUpSlot, st.handle(Tick(11.0)))  # not at once
    assert of(GiveUpSlot, st.handle(Tick(13.2))) == [GiveUpSlot(3)]


def test_a_slot_worker_whose_slot_was_given_up_claims_its_own_modules_and_grants_none() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, contested=True)
    out = st.handle(Started(0.0), Listed(0.0, [*registered(ME, OTHER)], whole=True))
    acquired = of(Acquire, out)
    assert acquired and all((i.attempt, i.claim) == (2, True) for i in acquired)
    assert acquired[0].takeover_from is None  # its own module: no "taking over" line
    st.handle(Listed(1.0, [K.request("b", OTHER)], whole=True))
    assert not of(Grant, st.handle(Tick(2.0)))


# --------------------------------------------------------------------- run alone


def test_run_alone_waits_for_every_other_live_worker_to_go_quiet() -> None:
    m = Module(noop, name="m", not_in_parallel=True)
    st = machine([m], {"m": 0})
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    out = st.handle(Started(0.0))
    [acquire] = of(Acquire, out)
    assert [r.name for r in acquire.resources] == [ALONE]
    out = st.handle(Acquired(0.2, "m", 1, won=True))
    assert st.phase["m"] is Phase.QUIETING and not of(Start, out)
    assert not of(Start, st.handle(Listed(0.3, [], whole=True)))
    assert not of(Start, st.handle(Listed(0.4, [], whole=True)))  # listings, but OTHER not quiet
    out = st.handle(Listed(0.5, [K.quiet("m", 1, OTHER)], whole=True))
    assert of(Start, out) == [Start("m", 1)]


def test_a_worker_that_sees_the_run_alone_lease_pauses_and_goes_quiet_once() -> None:
    m, x = Module(noop, name="m", not_in_parallel=True), Module(noop, name="x")
    st = machine([m, x], {"m": 1, "x": 0}, slot=0)
    st.handle(Started(0.0))
    acquire_and_start(st, "x", 0.0)  # x runs here already
    alone_key = K.lease(lease_resource(ALONE), 0)
    out = st.handle(Listed(0.1, [*registered(ME, OTHER), alone_key], whole=True))
    assert of(ReadAlone, out) == [ReadAlone()]
    out = st.handle(AloneRead(0.2, "m", 1, OTHER))
    assert not of(GoQuiet, out)  # x still runs here
    out = st.handle(Ended(0.3, "x", 1, Outcome.SUCCEEDED))
    assert of(GoQuiet, out) == [GoQuiet("m", 1, OTHER)]
    assert not of(GoQuiet, st.handle(Tick(0.4)))


def test_a_paused_worker_starts_nothing_until_the_alone_module_has_a_result() -> None:
    m = Module(noop, name="m", not_in_parallel=True)
    x = Module(noop, name="x")
    st = machine([m, x], {"m": 1, "x": 0}, lease_retry=0.25)
    st.handle(Started(0.0))
    st.handle(Acquired(0.0, "x", 1, won=False))  # lost its lease: x waits again
    alone_key = K.lease(lease_resource(ALONE), 0)
    st.handle(Listed(0.1, [*registered(ME, OTHER), alone_key], whole=True))
    out = st.handle(AloneRead(0.2, "m", 1, OTHER))
    assert not of(Acquire, out) and of(GoQuiet, out)
    out = st.handle(Listed(0.3, [K.result("m")], whole=False))
    assert [i.module for i in of(Acquire, out)] == ["x"]


# --------------------------------------------------------------------- cancel and drain


def test_a_cancel_stops_what_runs_and_cancels_what_has_not_started() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, jobs=1)
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    reason = "cancelled after x failed on slot 1"
    out = st.handle(CancelRead(0.5, reason))
    assert StopRunning(reason, hard=False) in out
    assert any("run cancelled" in s.text for s in of(Say, out))
    assert of(Resolve, out) == [Resolve("b", 1, Outcome.CANCELLED, reason)]  # needs no place
    out = st.handle(Ended(0.6, "a", 1, Outcome.CANCELLED), Ended(0.6, "b", 1, Outcome.CANCELLED))
    assert of(Finish, out) == [Finish(1)]


def test_a_cancel_read_while_modules_are_acquired_resolves_them_instead_of_starting() -> None:
    """The cancel and the answers to `Acquire` come in one batch, the cancel first (its read
    was asked for before the `Acquire`s): nothing runs yet, so no `StopRunning` covers them,
    and a `Start` after it would run the module to its end while every worker waits for it."""
    a, b = Module(noop, name="a"), Module(noop, name="b")
    c = Module(noop, name="c", not_in_parallel=["db"])
    st = machine([a, b, c], {"a": 0, "b": 0, "c": 0}, jobs=3)
    assert len(of(Acquire, st.handle(Started(0.0)))) == 3
    reason = "cancelled after x failed on slot 1"
    out = st.handle(
        CancelRead(0.5, reason),
        Acquired(0.5, "a", 1, won=True),
        Acquired(0.5, "b", 1, won=True),
        Acquired(0.5, "c", 1, won=True),
    )
    assert not of(Start, out)
    assert of(Resolve, out) == [Resolve(n, 1, Outcome.CANCELLED, reason) for n in "abc"]
    out = st.handle(*(Ended(0.6, n, 1, Outcome.CANCELLED) for n in "abc"))
    assert Release("c") in out  # its lease was taken: it is dropped
    assert of(Finish, out) == [Finish(1)]


def test_a_cancel_resolves_a_run_alone_module_that_waits_for_quiet() -> None:
    m = Module(noop, name="m", not_in_parallel=True)
    st = machine([m], {"m": 0})
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    st.handle(Started(0.0))
    st.handle(Acquired(0.1, "m", 1, won=True))
    assert st.phase["m"] is Phase.QUIETING
    out = st.handle(CancelRead(0.2, "stop"))
    assert of(Resolve, out) == [Resolve("m", 1, Outcome.CANCELLED, "stop")]
    assert not of(Start, st.handle(Listed(0.3, [K.quiet("m", 1, OTHER)], whole=True)))
    out = st.handle(Ended(0.4, "m", 1, Outcome.CANCELLED))
    assert Release("m") in out and of(Finish, out) == [Finish(1)]


def test_a_kept_going_run_starts_what_it_acquired_after_a_cancel() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 0}, keep_going=True)
    st.handle(Started(0.0))
    out = st.handle(CancelRead(0.1, "stop"), Acquired(0.1, "a", 1, won=True))
    assert of(Start, out) == [Start("a", 1)]


@pytest.mark.parametrize("hard", [False, True])
def test_a_stop_while_a_module_is_acquired_hands_it_back_instead_of_starting(hard: bool) -> None:
    a = Module(noop, name="a", not_in_parallel=["db"])
    st = machine([a], {"a": 0})
    st.handle(Started(0.0))
    out = st.handle(Stop(0.1, hard=hard), Acquired(0.1, "a", 1, won=True))
    assert not of(Start, out)
    assert Release("a") in out and any("handing back a" in s.text for s in of(Say, out))
    assert of(Finish, out) == [Finish(130 if hard else 0)]
    assert "a" not in st.outcomes


def test_always_run_modules_still_run_after_a_cancel() -> None:
    a = Module(noop, name="a", always_run=True)
    st = machine([a], {"a": 0})
    st.handle(CancelRead(0.0, "stop"))
    st.handle(Started(0.0))
    assert of(Start, acquire_and_start(st, "a", 0.1)) == [Start("a", 1)]


def test_a_drain_starts_nothing_new_and_finishes_when_the_running_module_ends() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    st = machine([a, b], {"a": 0, "b": 0}, jobs=1)
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    out = st.handle(Stop(0.1, hard=False))
    assert not of(StopRunning, out) and not of(Finish, out)
    out = st.handle(Ended(0.2, "a", 1, Outcome.SUCCEEDED))
    assert not of(Acquire, out) and of(Finish, out) == [Finish(0)]


def test_a_hard_stop_hands_back_what_runs_and_exits_130() -> None:
    a = Module(noop, name="a", not_in_parallel=["db"])
    st = machine([a], {"a": 0})
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    out = st.handle(Stop(0.1, hard=True))
    assert StopRunning("stopped by a signal", hard=True) in out
    out = st.handle(Ended(0.2, "a", 1, None))
    assert Release("a") in out
    assert any("handing back a" in s.text for s in of(Say, out))
    assert of(Finish, out) == [Finish(130)]
    assert "a" not in st.outcomes


def test_a_drained_idle_worker_finishes_at_once() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 1})
    st.handle(Started(0.0))
    assert of(Finish, st.handle(Stop(0.1))) == [Finish(0)]


# --------------------------------------------------------------------- bounded waits


def test_a_module_no_live_worker_can_serve_fails_after_the_timeout() -> None:
    gpu = Module(noop, name="gpu", requires=Requires(tags=["gpu"]))
    st = machine([gpu], {"gpu": 1}, unable=frozenset({"gpu"}), unservable_timeout=60.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    st.handle(Capable(0.0, OTHER, frozenset(), 1))  # OTHER has the tag
    assert not of(Acquire, st.handle(Tick(100.0)))
    st.handle(Dead(101.0, frozenset({OTHER})))
    st.handle(Tick(102.0))
    assert not of(Resolve, st.handle(Tick(150.0)))
    out = st.handle(Tick(170.0))
    [acquire] = of(Acquire, out)
    out = st.handle(Acquired(170.1, "gpu", acquire.attempt, won=True))
    [resolve] = of(Resolve, out)
    assert resolve.outcome is Outcome.FAILED and "no live worker can serve it" in resolve.reason


def test_a_worker_that_waits_says_for_what_and_from_whom() -> None:
    a = Module(noop, name="a")
    b = Module(noop, name="b", depends_on=[a])
    st = machine([a, b], {"a": 1, "b": 0}, log_every=30.0)
    st.handle(Started(0.0))
    st.handle(Listed(0.0, registered(ME, OTHER), whole=True))
    out = st.handle(Tick(31.0))
    assert [s.text for s in of(Say, out)] == [f"waiting for a from {OTHER}"]
    assert not of(Say, st.handle(Tick(32.0)))  # once per log_every


def test_a_lease_taken_elsewhere_is_retried_after_a_pause_not_at_once() -> None:
    a = Module(noop, name="a", not_in_parallel=["db"])
    st = machine([a], {"a": 0}, lease_retry=0.05)
    st.handle(Started(0.0))
    assert not of(Acquire, st.handle(Acquired(0.01, "a", 1, won=False)))
    assert not of(Acquire, st.handle(Tick(0.03)))
    assert of(Acquire, st.handle(Tick(0.07)))


def test_a_move_the_transition_table_does_not_allow_is_refused() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 0})
    with pytest.raises(AssertionError, match="no transition waiting -> running"):
        st.move("a", Phase.RUNNING)


def test_a_thousand_results_in_one_batch_cost_one_decision() -> None:
    mods = [Module(noop, name=f"m{i}") for i in range(1000)]
    last = Module(noop, name="last", depends_on=mods)
    st = machine([*mods, last], {**{m.name: 1 for m in mods}, "last": 0})
    st.handle(Started(0.0))
    events = [Listed(0.1, [K.result(m.name)], whole=False) for m in mods]
    out = st.handle(*events)
    assert [i.module for i in of(Acquire, out)] == ["last"]


def test_a_result_that_lost_to_an_unreadable_one_is_failed_after_a_bounded_wait() -> None:
    a = Module(noop, name="a")
    b = Module(noop, name="b", depends_on=[a])
    st = machine([a, b], {"a": 0, "b": 0}, heartbeat_timeout=10.0)
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    out = st.handle(Ended(1.0, "a", 1, Outcome.SUCCEEDED, written=False))
    assert "a" not in st.outcomes and not of(Acquire, out)  # the other result decides
    assert not of(Acquire, st.handle(Tick(5.0)))
    out = st.handle(Tick(11.5))
    assert any("no result of it can be read" in s.text for s in of(Say, out))
    assert st.outcomes["a"] is Outcome.FAILED
    out = st.handle(Tick(11.6))
    assert [i.outcome for i in of(Resolve, out)] == [Outcome.DEPENDENCY_FAILED]


def test_a_result_that_lost_to_a_listed_one_takes_that_ones_outcome() -> None:
    a = Module(noop, name="a")
    st = machine([a], {"a": 0})
    st.handle(Started(0.0))
    acquire_and_start(st, "a", 0.0)
    st.handle(Ended(1.0, "a", 1, Outcome.FAILED, written=False))
    out = st.handle(Listed(1.2, [K.result("a")], whole=False))
    assert st.outcomes["a"] is Outcome.SUCCEEDED and of(Finish, out) == [Finish(0)]


def test_a_later_module_does_not_jump_ahead_into_an_earlier_ones_planned_start() -> None:
    dep = Module(noop, name="dep")
    first = Module(noop, name="first", depends_on=[dep])
    later = Module(noop, name="later")
    pipeline = Pipeline([dep, first, later])
    view = PlanView(
        modules=pipeline.modules,
        owner={"dep": 1, "first": 0, "later": 0},
        order=["first", "later", "dep"],
        slot_order={0: ["first", "later"], 1: ["dep"]},
        start={"dep": 0.0, "first": 1.0, "later": 3.0},
        cost={"dep": 1.0, "first": 2.0, "later": 2.0},
    )
    st = WorkerState(plan=view, config=Config(worker=ME, slot=0), keys=K)
    assert not of(Acquire, st.handle(Started(0.0)))  # later would still run at 1.0: wait
    out = st.handle(Listed(0.5, [K.result("dep")], whole=False))
    assert [i.module for i in of(Acquire, out)] == ["first"]  # first came, in plan order
    st2 = WorkerState(plan=view, config=Config(worker=ME, slot=0), keys=K)
    st2.handle(Started(0.0))
    assert not of(Acquire, st2.handle(Tick(1.3)))  # a little overdue: still worth waiting
    out = st2.handle(Tick(1.6))  # first is well overdue (its dependency is late): do not idle
    assert [i.module for i in of(Acquire, out)] == ["later"]
