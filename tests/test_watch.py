"""The worker's watcher: whole listings, liveness from them, and what it forgives."""

from __future__ import annotations

import secrets
import threading
import time

from ciflow.distributed.events import Dead, Event
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import Liveness
from ciflow.distributed.watch import Watcher
from ciflow.stores import open_store
from ciflow.stores.base import Store

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
        jobs = GitHubJobs.from_env(env)
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
