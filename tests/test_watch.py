"""The worker's watcher: whole listings, liveness from them, what it forgives, and its cadence."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ciflow.distributed.cadence import Forecast, Outlook
from ciflow.distributed.events import Acquired, Dead, Ended, Event, Listed, Started
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.knowledge import Config, PlanView
from ciflow.distributed.liveness import Liveness
from ciflow.distributed.state import WorkerState
from ciflow.distributed.watch import Watcher
from ciflow.model.module import Module
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import Pipeline
from ciflow.stores import open_store
from ciflow.stores.base import Store
from ciflow.stores.github.artifacts import GitHubArtifactStore
from ciflow.testing.emulator import GitHubEmulator

KEYS = RunKeys("watch")
TIMEOUT = 0.3


def _watch(store: Store) -> tuple[Watcher, list[Dead]]:
    deaths: list[Dead] = []

    def post(event: Event) -> None:
        if isinstance(event, Dead):
            deaths.append(event)

    live = Liveness(store, KEYS, timeout=TIMEOUT)
    watcher = Watcher(store, KEYS, live, post, lambda _line: None, slow_poll=0.02)
    return watcher, deaths


def _silent_worker(store: Store) -> None:
    store.create(KEYS.worker("w"), b"{}")
    store.create(KEYS.alive("w", 1), b"{}")


def test_a_worker_whose_beats_stop_is_reported_dead() -> None:
    store = open_store(f"memory://watch-{secrets.token_hex(4)}")
    _silent_worker(store)
    watcher, deaths = _watch(store)
    watcher.start()
    try:
        deadline = time.monotonic() + 10 * TIMEOUT + 5
        while not any("w" in d.dead for d in deaths) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
        watcher.join()
    assert any("w" in d.dead for d in deaths)


def test_while_this_process_cannot_rely_on_the_store_a_silent_worker_is_not_dead() -> None:
    """Time this process's own calls spent failing and backing off (heartbeats' too) is
    forgiven: the silent worker's beats may be stuck in the same trouble."""
    store = open_store(f"memory://watch-{secrets.token_hex(4)}")
    _silent_worker(store)
    watcher, deaths = _watch(store)
    halt = threading.Event()

    def troubled() -> None:  # as the transport reports a failed attempt and its pause
        while not halt.wait(0.01):
            now = time.monotonic()
            store.stats.trouble(now - 0.01, now)

    trouble = threading.Thread(target=troubled)
    trouble.start()
    watcher.start()
    try:
        time.sleep(8 * TIMEOUT)  # many listings, the timeout passed several times over
        assert deaths and not any("w" in d.dead for d in deaths)
        halt.set()
        trouble.join()
        deadline = time.monotonic() + 10 * TIMEOUT + 5
        while not any("w" in d.dead for d in deaths) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any("w" in d.dead for d in deaths)  # once the store answers, silence counts
    finally:
        halt.set()
        watcher.stop()
        watcher.join()


def test_a_worker_found_dead_is_listed_again_before_its_death_is_posted() -> None:
    """The jobs API can be newer than the listing before it: a worker that wrote its last
    result just after that listing, then ended, must not look as if it left that module
    undone (another worker would run it again)."""
    from ciflow.distributed.events import Listed
    from ciflow.providers.github_jobs import GitHubJobs
    from ciflow.testing.emulator import GitHubEmulator

    with GitHubEmulator("127.0.0.1", 0) as emu:
        env = emu.env("7", "work-0")
        # a budget that lets the jobs API be asked at every listing (default: every 18 s)
        jobs = GitHubJobs.from_env({**env, "CIFLOW_JOBS_API_BUDGET": "1000000"})
        assert jobs is not None
        worker = f"s0-host-1-j{env['CIFLOW_JOB_ID']}"
        store = open_store(f"memory://watch-{secrets.token_hex(4)}")
        store.create(KEYS.worker(worker), b"{}")
        listings = 0
        real_list = store.list

        def list_then_finish(prefix: str) -> list[str]:
            nonlocal listings
            keys = real_list(prefix)
            listings += 1
            if listings == 2:  # just after this listing the worker stores its result and ends
                store.create(KEYS.result("m"), b"{}")
                emu.finish_job("7", "work-0", "success")
            return keys

        store.list = list_then_finish  # type: ignore[method-assign]
        events: list[Event] = []
        live = Liveness(store, KEYS, timeout=TIMEOUT, jobs=jobs, jobs_interval=0.0)
        watcher = Watcher(store, KEYS, live, events.append, lambda _l: None, slow_poll=0.02)
        watcher.start()
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(
                isinstance(e, Dead) and worker in e.dead for e in list(events)
            ):
                time.sleep(0.02)
        finally:
            watcher.stop()
            watcher.join()
            jobs.close()
    first_death = next(i for i, e in enumerate(events) if isinstance(e, Dead) and worker in e.dead)
    listed = {k for e in events[:first_death] if isinstance(e, Listed) for k in e.keys}
    assert KEYS.result("m") in listed  # its result is known before its death is


# --------------------------------------------------------------------- the cadence, on github://
#
# The watcher is stepped on a fake clock (`Watcher.step(now)` returns when it wants to look next)
# over a real github:// store on the emulator, which counts the listings (ListArtifacts).

SLOW, FAST = 15.0, 0.5


@contextmanager
def github_watcher() -> Iterator[tuple[Watcher, GitHubEmulator, list[Event]]]:
    with GitHubEmulator("127.0.0.1", 0) as emu:
        store = GitHubArtifactStore(env=emu.env("11", "work-0"))
        store.poll = FAST
        events: list[Event] = []
        live = Liveness(store, KEYS, timeout=120.0)
        yield (
            Watcher(store, KEYS, live, events.append, lambda _l: None, slow_poll=SLOW),
            emu,
            events,
        )


def listings(emu: GitHubEmulator) -> int:
    return emu.calls.get("ListArtifacts", 0)


def drive(watcher: Watcher, emu: GitHubEmulator, start: float, until: float) -> list[float]:
    """Step ``watcher`` from fake time ``start`` to ``until``; the times it listed the store."""
    looked, now = [], start
    while now <= until:
        before = listings(emu)
        after = watcher.step(now)
        if listings(emu) > before:
            looked.append(now)
        assert after > now  # it never wants to look again at once
        now = after
    return looked


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]


def test_while_nothing_is_due_the_watcher_lists_once_per_slow_poll() -> None:
    with github_watcher() as (watcher, emu, events):
        looked = drive(watcher, emu, 0.0, 100.0)
    assert looked == [15.0, 30.0, 45.0, 60.0, 75.0, 90.0]  # none at the start either
    assert sum(isinstance(e, Listed) and e.whole for e in events) == len(looked)


def test_a_due_result_is_looked_for_closely_around_its_due_time_and_less_once_late() -> None:
    due = 60.0
    with github_watcher() as (watcher, emu, _events):
        watcher.expect(Outlook(due=due))
        looked = drive(watcher, emu, 0.0, 120.0)
    early = [t for t in looked if t < due - 8]
    close = [t for t in looked if due <= t <= due + 1.5]
    late = [t for t in looked if t > due + 1.5]
    assert len(early) <= 4  # far from the due time: rarely (halving, at most 15 s apart)
    assert close[0] == due + FAST / 2  # first looked for just after its due time...
    assert set(gaps(close)) == {FAST}  # ... then every `poll` for a while
    late_gaps = gaps([close[-1], *late])
    assert late_gaps == sorted(late_gaps) and late_gaps[-1] > 4 * FAST  # then less and less
    assert max(gaps(looked)) <= SLOW
    assert min(gaps(looked)) >= FAST


@pytest.mark.parametrize(
    "outlook, longest",
    [
        (Outlook(), SLOW),
        (Outlook(due=-1e6), SLOW),  # a result far overdue: no longer looked for closely
        (Outlook(due=1e6), SLOW),  # one due far ahead
        (Outlook(exchange=True), SLOW / 4),  # waiting on another worker's record
        (Outlook(due=-1e6, exchange=True), SLOW / 4),
    ],
)
def test_no_gap_between_looks_exceeds_the_longest_pause(outlook: Outlook, longest: float) -> None:
    with github_watcher() as (watcher, emu, _events):
        watcher.expect(outlook)
        looked = drive(watcher, emu, 0.0, 200.0)
    assert looked and max(gaps([0.0, *looked])) <= longest
    assert len(looked) >= 200.0 / longest - 1  # and it keeps looking


def test_a_listing_the_store_made_since_the_last_look_is_taken_as_the_next_look() -> None:
    with github_watcher() as (watcher, emu, events):
        other = GitHubArtifactStore(env=emu.env("11", "work-1"))
        assert watcher.step(0.0) == SLOW
        other.create(KEYS.result("m"), b"{}")
        watcher.store.list(KEYS.root)  # this process listed for its own reasons
        before, looks = listings(emu), watcher.looks
        assert watcher.step(SLOW) == 2 * SLOW
        assert (listings(emu), watcher.looks) == (before, looks + 1)  # taken, not listed again
        assert watcher.step(2 * SLOW) == 3 * SLOW
        assert (listings(emu), watcher.looks) == (before + 1, looks + 2)  # that one is seen
    listed = [e for e in events if isinstance(e, Listed)]
    assert listed[0].whole and KEYS.result("m") in listed[0].keys


def test_the_drift_of_the_results_moves_the_watchers_close_looks() -> None:
    """A module of ours ended 3 s late: the result we wait on is looked for 3 s later too."""
    own = Module(noop, name="own")
    a = Module(noop, name="a")
    x = Module(noop, name="x", depends_on=[own, a])
    st = machine([own, a, x], {"own": 0, "a": 1, "x": 0})
    forecast = Forecast({"own": 5.0, "a": 10.0, "x": 15.0})
    st.handle(Started(0.0))
    st.handle(Acquired(0.0, "own", 1, won=True))
    assert forecast.outlook(st, 1.0).due is None  # busy: nothing it could start
    st.handle(Ended(8.0, "own", 1, Outcome.SUCCEEDED))
    outlook = forecast.outlook(st, 8.0)
    assert outlook.due == 13.0  # a's planned finish (10) + the drift (3)
    with github_watcher() as (watcher, emu, _events):
        watcher.expect(outlook)
        looked = drive(watcher, emu, 8.0, 20.0)
    close = [t for t, gap in zip(looked[1:], gaps(looked), strict=False) if gap == FAST]
    assert close and min(close) > 13.0  # not around a's planned 10 s


def noop() -> None:
    return None


def machine(mods: list[Module], owner: dict[str, int]) -> WorkerState:
    """Slot 0's worker state over ``mods`` placed by ``owner``."""
    pipeline = Pipeline(mods)
    slot_order: dict[int, list[str]] = {}
    for name in pipeline.order:
        slot_order.setdefault(owner[name], []).append(name)
    view = PlanView(
        modules=pipeline.modules,
        owner=owner,
        order=sorted(pipeline.order, key=lambda n: owner[n] != 0),
        slot_order=slot_order,
    )
    return WorkerState(plan=view, config=Config(worker="s0-host-1", slot=0), keys=KEYS)
