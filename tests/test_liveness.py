"""Liveness: a worker is taken for dead only on evidence the observer itself gathered."""

from __future__ import annotations

import secrets

from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import EVIDENCE, Liveness
from ciflow.stores import open_store

KEYS = RunKeys("live")


def _beat(store_name: str, worker: str, seq: int) -> None:
    open_store(store_name).create(KEYS.alive(worker, seq), b"{}")


def test_a_silent_worker_is_dead_only_after_several_listings_saw_the_silence() -> None:
    name = f"memory://live-{secrets.token_hex(4)}"
    _beat(name, "w", 1)
    live = Liveness(open_store(name), KEYS, timeout=0.0)
    live.refresh()
    assert live.dead(["w"]) == set()  # the timeout passed, but one listing is no evidence
    for _ in range(EVIDENCE - 1):
        live.refresh()
        assert live.dead(["w"]) == set()
    live.refresh()
    assert live.dead(["w"]) == {"w"}


def test_a_rising_beat_resets_the_evidence() -> None:
    name = f"memory://live-{secrets.token_hex(4)}"
    _beat(name, "w", 1)
    live = Liveness(open_store(name), KEYS, timeout=0.0)
    for _ in range(EVIDENCE):
        live.refresh()
    _beat(name, "w", 2)
    live.refresh()
    assert live.dead(["w"]) == set()


def test_time_the_observer_could_not_reach_the_store_is_not_held_against_others() -> None:
    name = f"memory://live-{secrets.token_hex(4)}"
    _beat(name, "w", 1)
    live = Liveness(open_store(name), KEYS, timeout=0.5)
    live.refresh()
    live.dead(["w"])
    live.refresh(blind=3600.0)  # the observer was cut off: that hour does not count
    for _ in range(EVIDENCE):
        live.refresh()
    assert live.dead(["w"]) == set()


def test_a_beat_stuck_retrying_does_not_hold_up_the_next() -> None:
    import threading
    import time

    from ciflow.distributed.liveness import HeartbeatThread

    name = f"memory://live-{secrets.token_hex(4)}"
    store = open_store(name)
    stuck = threading.Event()
    create = store.create

    def slow_first(key: str, data: bytes, *, sole: bool = False) -> bool:
        if key == KEYS.alive("w", 1):
            stuck.wait(10)  # as a write that keeps retrying
        return create(key, data, sole=sole)

    store.create = slow_first  # type: ignore[method-assign]
    beats = HeartbeatThread(store, KEYS, "w", interval=0.02)
    beats.start()
    live = Liveness(open_store(name), KEYS, timeout=0.0)
    try:
        deadline = time.monotonic() + 10
        while not open_store(name).list(KEYS.alive_prefix) and time.monotonic() < deadline:
            time.sleep(0.01)
        live.refresh()
        assert live.last_seen("w") is not None  # a later beat landed while the first hung
        stuck.set()
        time.sleep(0.2)
    finally:
        beats.stop()
        beats.join(timeout=5)
    time.sleep(0.2)  # the beats in flight land
    left = open_store(name).list(KEYS.alive_prefix)
    assert len(left) == 1 and KEYS.alive("w", 1) not in left  # the late first beat was dropped


def test_heartbeats_thin_out_then_stop_as_the_store_runs_out_of_creations() -> None:
    """Where the store counts the records it may still create, the last ``reserve`` are kept
    for the worker's own: below twice that, one beat every ``longest``; at it, none."""
    import threading
    import time

    from ciflow.distributed.liveness import HeartbeatThread

    store = open_store(f"memory://live-{secrets.token_hex(4)}")
    left = [100]
    store.creations_left = lambda: left[0]  # type: ignore[attr-defined]
    said: list[str] = []
    beats = HeartbeatThread(
        store, KEYS, "w", interval=0.01, reserve=5, longest=0.02, say=said.append, at_once=True
    )
    written = threading.Event()
    create = store.create

    def counting(key: str, data: bytes, *, sole: bool = False) -> bool:
        written.set()
        return create(key, data, sole=sole)

    store.create = counting  # type: ignore[method-assign]

    def settle(n: int) -> int:
        """Wait until ``n`` more ticks passed (each lands or is skipped); the beats written."""
        start = beats.seq
        deadline = time.monotonic() + 10
        while beats.seq < start + n and time.monotonic() < deadline:
            time.sleep(0.005)
        return beats.seq

    beats.start()
    try:
        assert settle(3) >= 3 and beats.interval == 0.01 and said == []
        left[0] = 8  # below twice the reserve: thinned
        settle(2)
        assert beats.interval == 0.02
        thinned = "heartbeats thinned to one every 0.02s: 8 record creations left in the store"
        assert said == [thinned]
        left[0] = 5  # at the reserve: no more beats
        deadline = time.monotonic() + 10
        while len(said) < 2 and time.monotonic() < deadline:  # a tick that refused to beat
            time.sleep(0.005)
        assert said[1] == (
            "heartbeats stop: 5 record creations left in the store, kept for this worker's results"
        )
        time.sleep(0.1)  # a beat launched just before that tick lands
        stopped = beats.seq
        written.clear()
        time.sleep(0.2)  # ten intervals
        assert beats.seq == stopped and not written.is_set()
        assert len(said) == 2  # each said once
    finally:
        beats.stop()
        beats.join(timeout=5)


def test_a_store_that_does_not_count_creations_is_never_thinned() -> None:
    import time

    from ciflow.distributed.liveness import HeartbeatThread

    store = open_store(f"memory://live-{secrets.token_hex(4)}")
    beats = HeartbeatThread(store, KEYS, "w", interval=0.01, reserve=10**9)
    assert beats.paced() and beats.interval == 0.01
    beats.start()
    try:
        deadline = time.monotonic() + 10
        while beats.seq < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert beats.seq >= 5
    finally:
        beats.stop()
        beats.join(timeout=5)
