"""Worker registrations and liveness, kept in the store.

A worker registers once (``workers/<worker>``) and then heartbeats by creating
``alive/<worker>/<seq>`` with a rising sequence number, deleting older beats where the store
allows it. Observers never compare clocks across machines: a worker is dead when *they* have
not seen its sequence number rise for ``timeout`` seconds of their own monotonic clock, and
only with evidence: at least `EVIDENCE` listings of their own since the last rise, with the
time the observer could not rely on the store (a listing that failed, or any of its own calls
failing and backing off, see `StoreStats.troubled`) not counted against it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable

from ..model.requirements import Capabilities
from ..providers.github_jobs import GitHubJobs, job_of
from ..stores.base import Store, StoreError
from .keys import RunKeys
from .messages import Done, Heartbeat, Registration, decode, encode

__all__ = [
    "EVIDENCE", "IN_FLIGHT", "HeartbeatThread", "Liveness", "new_worker_id",
    "read_registrations", "register",
]  # fmt: skip

#: listings an observer must make after a worker's last beat before it may call it dead
EVIDENCE = 3
#: heartbeat writes under way at once (see `HeartbeatThread`)
IN_FLIGHT = 3


def new_worker_id(slot: int, job: str | None = None) -> str:
    """``s<slot>-<host>-<pid>``: unique per process, readable in summaries.

    With ``job`` (its CI job id, when the platform's jobs API watches it instead of
    heartbeats) ``-j<job>`` is appended, so every observer knows which job to look at.
    """
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:32]
    worker = f"s{slot}-{host or 'host'}-{os.getpid()}"
    return f"{worker}-j{job}" if job else worker


def register(
    store: Store,
    keys: RunKeys,
    worker: str,
    slot: int,
    caps: Capabilities,
    runs_on: str | None = None,
) -> Registration:
    """Write this worker's registration; a second worker with the same id is an error."""
    reg = Registration(
        worker=worker,
        slot=slot,
        host=socket.gethostname(),
        pid=os.getpid(),
        os=caps.os or "",
        arch=caps.arch or "",
        tools=sorted(caps.tools or ()),
        tags=sorted(caps.tags),
        max_parallel=caps.max_parallel,
        runs_on=runs_on,
        registered_at=time.time(),
    )
    if not store.create(keys.worker(worker), encode(reg), sole=True):
        raise StoreError(
            f"a worker named {worker!r} is already registered in run {keys.run_id}; "
            "give each worker its own --slot or start a new run"
        )
    return reg


def read_registrations(store: Store, keys: RunKeys) -> list[Registration]:
    """Every registration of the run, by slot then id."""
    found = []
    for key in store.list(keys.workers):
        data = store.get(key)
        if data is not None:
            found.append(decode(Registration, data, key=key))
    return sorted(found, key=lambda r: (r.slot, r.worker))


def finished_workers(store: Store, keys: RunKeys) -> dict[str, Done]:
    """Workers that deregistered, with their exit codes."""
    done = {}
    for key in store.list(keys.done):
        data = store.get(key)
        if data is not None:
            record = decode(Done, data, key=key)
            done[record.worker] = record
    return done


class HeartbeatThread(threading.Thread):
    """Beats every ``interval`` seconds until `stop`; keeps only the newest beat where it can.

    A beat whose write is retrying (a flaky store, a rate limit) does not hold up the next:
    up to `IN_FLIGHT` beats are written at once, each in its own thread, so observers see
    the sequence rise as soon as any of them lands.
    """

    def __init__(self, store: Store, keys: RunKeys, worker: str, interval: float) -> None:
        super().__init__(name=f"ciflow-heartbeat-{worker}", daemon=True)
        self.store = store
        self.keys = keys
        self.worker = worker
        self.interval = interval
        self.running: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._landed: set[int] = set()
        self._flying: list[threading.Thread] = []
        self.seq = 0
        self.error: str | None = None

    def beat(self) -> None:
        """One heartbeat now (also called once before the thread starts)."""
        with self._lock:
            self.seq += 1
            seq = self.seq
        record = Heartbeat(worker=self.worker, seq=seq, at=time.time(), running=self.running)
        self.store.create(self.keys.alive(self.worker, seq), encode(record), sole=True)
        with self._lock:  # drop every beat older than the newest landed one, this one too
            self._landed.add(seq)
            newest = max(self._landed)
            stale = sorted(s for s in self._landed if s < newest)
            self._landed.difference_update(stale)
        for old in stale:
            try:
                self.store.delete(self.keys.alive(self.worker, old))
            except StoreError:
                pass  # stores that cannot delete keep the old beats; observers take the newest

    def _beat_in_flight(self) -> None:
        try:
            self.beat()
            self.error = None
        except StoreError as exc:  # a flaky store must not kill the worker; the next beat tries
            self.error = str(exc)
        finally:
            self._slots.release()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            if self._slots.acquire(blocking=False):  # else IN_FLIGHT beats are still retrying
                name = f"{self.name}-beat"
                beat = threading.Thread(target=self._beat_in_flight, name=name, daemon=True)
                self._flying = [t for t in self._flying if t.is_alive()] + [beat]
                beat.start()

    def stop(self) -> None:
        self._halt.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread and for the beats it still has in flight."""
        deadline = None if timeout is None else time.monotonic() + timeout
        super().join(timeout)
        for beat in list(self._flying):
            beat.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class Liveness:
    """Tells, from this observer's clock, which workers stopped heartbeating.

    A worker whose id names its CI job (``-j<id>``) does not heartbeat: it is gone when the
    platform's jobs API (``jobs``) reports that job completed. An observer without that API
    counts such a worker alive until it deregisters.
    """

    def __init__(
        self,
        store: Store,
        keys: RunKeys,
        timeout: float,
        jobs: GitHubJobs | None = None,
        jobs_interval: float = 60.0,
    ) -> None:
        self.store = store
        self.keys = keys
        self.timeout = timeout
        self.jobs = jobs
        self.jobs_interval = jobs_interval
        self.jobs_error: str | None = None
        self._job_states: dict[str, str] = {}
        self._jobs_asked = -float("inf")
        # worker -> (seq, when it rose, this observer's listings then)
        self._seen: dict[str, tuple[int, float, int]] = {}
        self._listings = 0

    def refresh(self, listed: Iterable[str] | None = None, blind: float = 0.0) -> None:
        """Note the newest beat of every worker: from ``listed`` keys, or one list call.

        ``blind``: seconds just before this listing during which this observer could not
        reach the store; they are forgiven (every worker's silence counts from after them).
        """
        now = time.monotonic()
        if blind > 0:
            self._seen = {w: (seq, t + blind, n) for w, (seq, t, n) in self._seen.items()}
        self._listings += 1
        newest: dict[str, int] = {}
        prefix = self.keys.alive_prefix
        keys = self.store.list(prefix) if listed is None else listed
        for key in keys:
            if not key.startswith(prefix):
                continue
            worker, _, number = key[len(self.keys.alive_prefix) :].partition("/")
            if number.isdigit():
                newest[worker] = max(newest.get(worker, 0), int(number))
        for worker, seq in newest.items():
            old = self._seen.get(worker)
            if old is None or seq > old[0]:
                self._seen[worker] = (seq, now, self._listings)

    def refresh_jobs(self) -> None:
        """Ask the jobs API again, at most once per ``jobs_interval`` (call it when waiting)."""
        if self.jobs is None or time.monotonic() - self._jobs_asked < self.jobs_interval:
            return
        self._jobs_asked = time.monotonic()
        try:
            self._job_states = self.jobs.statuses()
            self.jobs_error = None
        except StoreError as exc:  # keep the last answer; try again next interval
            self.jobs_error = str(exc)

    def dead(self, workers: Iterable[str], finished: Iterable[str] = ()) -> set[str]:
        """Of ``workers``, those silent for longer than the timeout (finished ones are dead)."""
        now = time.monotonic()
        gone = set(finished)
        result = set()
        for worker in workers:
            seen = self._seen.get(worker)
            job = job_of(worker)
            if worker in gone:
                result.add(worker)
            elif job is not None:
                if self._job_states.get(job) == "completed":
                    result.add(worker)
            elif seen is None:
                self._seen[worker] = (0, now, self._listings)  # start the clock at first sight
            elif now - seen[1] > self.timeout and self._listings - seen[2] >= EVIDENCE:
                result.add(worker)
        return result

    def last_seen(self, worker: str) -> float | None:
        """Seconds since this observer saw ``worker``'s heartbeat rise, or None."""
        seen = self._seen.get(worker)
        return None if seen is None else time.monotonic() - seen[1]
