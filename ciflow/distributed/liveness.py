"""Worker registrations and liveness, kept in the store.

A worker registers once (``workers/<worker>``) and then heartbeats by creating
``alive/<worker>/<seq>`` with a rising sequence number, deleting older beats where the store
allows it. Observers never compare clocks across machines: a worker is dead when *they* have
not seen its sequence number rise for ``timeout`` seconds of their own monotonic clock, and
only with evidence: at least `EVIDENCE` listings of their own since the last rise, with the
time the observer could not rely on the store (a listing that failed, or any of its own calls
failing and backing off, see `StoreStats.troubled`) not counted against it.

On GitHub the jobs API can stand in for heartbeats (`Liveness`), within a budget; when the
budget or the rate limit runs out, the whole run falls back to heartbeats. See
docs/architecture.md, "The jobs API budget".
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable

from ..model.requirements import Capabilities
from ..providers.github_jobs import GitHubJobs, JobsApiLimited, job_of
from ..stores.base import Store, StoreError
from .keys import RunKeys
from .messages import Done, Heartbeat, Registration, decode, encode

__all__ = [
    "CREATION_RESERVE", "EVIDENCE", "IN_FLIGHT", "HeartbeatThread", "Liveness", "new_worker_id",
    "read_registrations", "register",
]  # fmt: skip

#: listings an observer must make after a worker's last beat before it may call it dead
EVIDENCE = 3
#: heartbeat writes under way at once (see `HeartbeatThread`)
IN_FLIGHT = 3
#: record creations a worker keeps for its own records where the store counts them
CREATION_RESERVE = 50


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
    the sequence rise as soon as any of them lands. ``at_once``: the first beat goes at start.

    Where the store counts the records it may still create (``creations_left()``, e.g. an
    artifact limit per job), the last ``reserve`` are kept for the worker's own records: below
    twice that, beats thin out to one every ``longest`` seconds (default twice ``interval``,
    well within the default heartbeat timeout of four intervals); at the reserve they stop.
    Each step is said once (``say``).
    """

    def __init__(
        self,
        store: Store,
        keys: RunKeys,
        worker: str,
        interval: float,
        *,
        at_once: bool = False,
        reserve: int = CREATION_RESERVE,
        longest: float | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name=f"ciflow-heartbeat-{worker}", daemon=True)
        self.store = store
        self.keys = keys
        self.worker = worker
        self.interval = interval
        self.at_once = at_once
        self.reserve = reserve
        self.longest = max(interval, longest if longest is not None else 2 * interval)
        self.say = say
        self.running: list[str] = []
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._landed: set[int] = set()
        self._flying: list[threading.Thread] = []
        self._said: set[str] = set()
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

    def paced(self) -> bool:
        """Whether this tick may beat, by the store's creations left (thinning as they run low)."""
        counter = getattr(self.store, "creations_left", None)
        left = counter() if callable(counter) else None
        if not isinstance(left, int):
            return True  # the store does not count creations
        if left <= self.reserve:
            self._once("stop", f"heartbeats stop: {left} record creations left in the store, "
                       "kept for this worker's results")  # fmt: skip
            return False
        if left <= 2 * self.reserve and self.interval < self.longest:
            self.interval = self.longest
            self._once("thin", f"heartbeats thinned to one every {self.longest:g}s: {left} "
                       "record creations left in the store")  # fmt: skip
        return True

    def _once(self, step: str, line: str) -> None:
        if step not in self._said:
            self._said.add(step)
            if self.say is not None:
                self.say(line)

    def _launch(self) -> None:
        if self.paced() and self._slots.acquire(blocking=False):  # else IN_FLIGHT are retrying
            beat = threading.Thread(target=self._beat_in_flight, name=f"{self.name}-beat")
            beat.daemon = True
            self._flying = [t for t in self._flying if t.is_alive()] + [beat]
            beat.start()

    def run(self) -> None:
        if self.at_once:
            self._launch()
        while not self._halt.wait(self.interval):
            self._launch()

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

    **Fallback.** When the jobs API's budget or rate limit says stop (`GitHubJobs.exhausted`,
    `JobsApiLimited`), or the observer lists a beat of any ``-j`` worker (one that fell back),
    the observer says so once (``say``), stops asking the API, and starts this worker's own
    heartbeats (``heartbeats`` makes them; only a ``-j`` worker has one). Such a beat in the
    store is what tells every observer that the run switched (`run_switched`): from its first
    sight, an observer judges every ``-j`` worker by heartbeats, the silence of one without
    beats counted from then, so each has a whole timeout to see the switch and beat. A ``-j``
    worker with beats is judged by them; one whose job the last answer reported completed is
    dead. An observer that fell back but does not beat as a ``-j`` worker sends no such sign,
    so until it sees one it counts ``-j`` workers without beats alive.
    """

    def __init__(
        self,
        store: Store,
        keys: RunKeys,
        timeout: float,
        jobs: GitHubJobs | None = None,
        jobs_interval: float = 60.0,
        *,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.timeout = timeout
        self.jobs = jobs
        self.jobs_interval = jobs_interval
        self.jobs_error: str | None = None
        self.say = say
        #: makes this worker's heartbeats when the run switches (set for a ``-j`` worker)
        self.heartbeats: Callable[[], HeartbeatThread] | None = None
        #: those heartbeats, once started
        self.beats: HeartbeatThread | None = None
        #: when (monotonic) this observer stopped asking the jobs API
        self.switched: float | None = None
        #: when it first listed a beat of a ``-j`` worker: the run switched, all to heartbeats
        self.run_switched: float | None = None
        self._jobs_asked = -float("inf")
        self._beating: set[str] = set()  # ``-j`` workers seen heartbeating
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
            if worker not in self._beating and job_of(worker) is not None:
                self._beating.add(worker)  # it fell back (this observer, too, maybe)
                if self.run_switched is None:
                    self.run_switched = now
                self._fall_back(f"worker {worker} switched to them")

    def refresh_jobs(self) -> None:
        """Ask the jobs API again when its schedule allows (call it when waiting): at most once
        per ``jobs_interval`` and within the run's budget (`GitHubJobs.next_look`); fall back
        to heartbeats when the budget or the rate limit says so."""
        jobs = self.jobs
        if jobs is None or self.switched is not None:
            return
        why = jobs.exhausted()
        if why is None:
            now = jobs.clock()
            if now < max(self._jobs_asked + self.jobs_interval, jobs.next_look()):
                return
            self._jobs_asked = now
            try:
                jobs.statuses()
                self.jobs_error = None
            except JobsApiLimited as exc:
                why = exc.why
            except StoreError as exc:  # keep the last answer; try again next interval
                self.jobs_error = str(exc)
                return
            why = why or jobs.exhausted()
        if why is not None:
            self._fall_back(f"jobs API: {why}")

    def _fall_back(self, why: str) -> None:
        """The run switched to heartbeats: say so (once), start this worker's own."""
        if self.switched is not None:
            return
        self.switched = time.monotonic()
        if self.jobs is None:
            return  # it never used the API: nothing to say, it heartbeats already
        if self.say is not None:
            self.say(f"liveness: heartbeats from now on ({why})")
        if self.heartbeats is not None:
            self.beats = self.heartbeats()
            self.beats.at_once = True
            self.jobs.on_close(self.beats.stop)
            self.beats.start()

    def dead(self, workers: Iterable[str], finished: Iterable[str] = ()) -> set[str]:
        """Of ``workers``, those silent for longer than the timeout (finished ones are dead)."""
        now = time.monotonic()
        gone = set(finished)
        states = self.jobs.states if self.jobs is not None else {}
        result = set()
        for worker in workers:
            seen = self._seen.get(worker)
            job = job_of(worker)
            if worker in gone or (job is not None and states.get(job) == "completed"):
                result.add(worker)
            elif job is not None and self.run_switched is None and worker not in self._beating:
                continue  # the jobs API watches it (or nobody: alive until it deregisters)
            elif seen is None:
                self._seen[worker] = (0, now, self._listings)  # start the clock at first sight
            elif (
                now - seen[1] > self._allowed(worker, job) and self._listings - seen[2] >= EVIDENCE
            ):
                result.add(worker)
        return result

    def _allowed(self, worker: str, job: str | None) -> float:
        """Silence allowed: the timeout; for a ``-j`` worker not beating yet after the switch,
        also the longest it may take to list the first beat (two of its slow looks)."""
        if job is not None and worker not in self._beating:
            return self.timeout + 2 * self.store.profile.slow_poll
        return self.timeout

    def last_seen(self, worker: str) -> float | None:
        """Seconds since this observer saw ``worker``'s heartbeat rise, or None."""
        seen = self._seen.get(worker)
        return None if seen is None else time.monotonic() - seen[1]
