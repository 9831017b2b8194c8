"""``ciflow worker``: one process of a distributed run, sharing nothing but the store.

The worker registers and heartbeats, waits for the plan, then loops: read what the store says
(results, claims, the cancel record, liveness), and act — run its slot's ready modules in plan
order, steal ready modules of other slots when it has room, take over claims of dead workers,
and record the outcome of modules that cannot run (a failed dependency, fail-fast). Every module
is run (or resolved) only after its claim was created, so exactly one claim per attempt wins.
Running a module reuses the local `Engine` on a one-module selection, so outcomes, timeouts,
retries and cancellation mean exactly what they mean in ``ciflow run``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._signals import catching_signals
from ..errors import CiflowError, RequirementError
from ..execution.engine import Engine
from ..execution.policy import dependency_verdict
from ..model.outcome import ModuleRecord, Outcome
from ..model.pipeline import Pipeline, Selection
from ..model.requirements import Capabilities, unmet
from ..planning.planner import DistributedExecutionPlan
from ..providers.github_jobs import GitHubJobs, job_of
from ..stores.base import Store, StoreError
from ..ui.console import Console
from .keys import RunKeys
from .liveness import HeartbeatThread, Liveness, new_worker_id, register
from .messages import CancelRecord, Claim, Done, Lease, StealRequest, decode, encode
from .results import ResultCache, publish_result

__all__ = ["Worker", "WorkerOptions", "read_plan"]


@dataclass
class WorkerOptions:
    """How a worker behaves; the CLI fills it from flags."""

    slot: int
    jobs: int = 1
    steal: bool = True
    keep_going: bool = False
    heartbeat_interval: float | None = None  # default: the store's suggestion
    heartbeat_timeout: float | None = None
    plan_timeout: float = 600.0
    slow_poll: float | None = None  # how often the run's namespace is listed (default: store's)
    steal_delay: float = 0.1  # a module must be ready this long before another slot takes it
    tags: tuple[str, ...] = ()
    runs_on: str | None = None
    workdir: Path = field(default_factory=Path.cwd)


def read_plan(store: Store, keys: RunKeys, timeout: float) -> DistributedExecutionPlan:
    """Wait up to ``timeout`` for the run's plan in the store and parse it."""
    deadline = time.monotonic() + timeout
    while True:
        data = store.get(keys.plan)
        if data is not None:
            return _parse_plan(data, keys.plan)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreError(
                f"no plan for run {keys.run_id} appeared in the store within {timeout:g}s; "
                "run `ciflow plan --store ... --run-id ...` (or --wait-for-workers) for it"
            )
        store.wait(keys.plan, (), min(remaining, 1.0))


def _parse_plan(data: bytes, key: str) -> DistributedExecutionPlan:
    from pydantic import ValidationError

    try:
        return DistributedExecutionPlan.model_validate_json(data)
    except ValidationError as exc:
        raise StoreError(
            f"plan {key} is not a valid ciflow plan: {exc.errors()[0]['msg']}"
        ) from None


_FAILING = (Outcome.FAILED, Outcome.TIMED_OUT)


def _slot_of(worker: str) -> int | None:
    """The slot in a worker id made by `new_worker_id` (``s<slot>-...``), or None."""
    head = worker.partition("-")[0]
    return int(head[1:]) if head[:1] == "s" and head[1:].isdigit() else None


def _failpoint(point: str, module: str) -> None:
    """Fault injection for tests: ``CIFLOW_FAILPOINT=<point>:<module>`` SIGKILLs this worker.

    Points: ``after-claim`` (claimed, nothing run), ``before-result`` (ran, result not yet
    written), ``after-outputs`` (outputs uploaded, result not yet written).
    """
    if os.environ.get("CIFLOW_FAILPOINT") == f"{point}:{module}":
        os.kill(os.getpid(), signal.SIGKILL)


def _resource(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


@dataclass
class _Running:
    module: str
    attempt: int
    leases: list[str]
    engine: Engine | None = None
    future: Future[None] | None = None


class Worker:
    """One worker of a distributed run. Create it, then call `run()`; it returns the exit code."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        run_id: str,
        options: WorkerOptions,
        console: Console | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.keys = RunKeys(run_id)
        self.options = options
        self.console = console or Console()
        self.worker_id = new_worker_id(options.slot)
        tools = {t for m in pipeline.modules.values() for t in m.requires.tools}
        self.caps = Capabilities.detect(tools, options.tags, options.jobs)
        self.results = ResultCache(store, self.keys)
        beat = options.heartbeat_interval or store.profile.heartbeat
        self.heartbeat_interval = beat
        self.heartbeat_timeout = options.heartbeat_timeout or max(10.0, 4 * beat)
        self.slow_poll = options.slow_poll or store.profile.slow_poll
        self.liveness = Liveness(store, self.keys, self.heartbeat_timeout)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._claims: dict[str, tuple[int, Claim]] = {}  # module -> newest claim
        self._cancel: CancelRecord | None = None
        self._ran_bad: list[str] = []
        self._draining = False
        self._hard_stop = False
        self._pool = ThreadPoolExecutor(max_workers=options.jobs, thread_name_prefix="ciflow-run")
        self._restored: set[str] = set()
        self._started = time.monotonic()
        self._errors: list[BaseException] = []
        self._slot_map: dict[int, str] = {}
        self._registrations: dict[str, str] = {}  # registration key -> worker id
        self._finished: dict[str, str] = {}  # done key -> worker
        self._ready_since: dict[str, float] = {}
        self._claim_attempts: dict[str, int] = {}  # module -> newest claimed attempt listed
        self._requests: dict[str, list[str]] = {}  # module -> workers that asked for it
        self._asked: dict[str, float] = {}  # modules this worker asked for -> when
        self._ask_expiry = 4 * max(self.slow_poll, store.poll) + 1.0
        self._slot_order: dict[int, list[str]] = {}
        self._warned_twice = False
        # not_in_parallel=True across workers: the holder of the run-alone lease waits until
        # every other live worker says it is quiet; the others pause until its result is in
        self._alone_wait: tuple[str, int, list[str], int] | None = None  # ours, not started
        self._listings = 0  # whole-namespace listings read so far
        self._alone_seen: Lease | None = None  # the run-alone lease as another worker holds it
        self._quiet: set[str] = set()  # listed quiet keys
        self._acked: set[tuple[str, int]] = set()
        self._dead: set[str] = set()

    # ------------------------------------------------------------------ public

    def run(self) -> int:
        """Register, run until every module of the plan has a result, deregister."""
        own_job = self._watch_jobs()
        if own_job is not None:
            self.worker_id = new_worker_id(self.options.slot, own_job)
        reg = register(
            self.store, self.keys, self.worker_id, self.options.slot, self.caps,
            self.options.runs_on,
        )  # fmt: skip
        self._say(f"registered as {reg.worker} (slot {reg.slot}, {reg.os}/{reg.arch})")
        # the registration is the first sign of life: the first beat follows one interval later
        beats = HeartbeatThread(self.store, self.keys, self.worker_id, self.heartbeat_interval)
        if own_job is None:
            beats.start()
        else:
            self._say(f"liveness: the jobs API watches job {own_job}; no heartbeats")
        signals = [0]

        def on_signal(signum: int) -> None:
            signals[0] += 1
            self.stop(hard=signals[0] > 1 or signum == signal.SIGINT)

        code = 2
        try:
            with catching_signals(on_signal):
                plan = read_plan(self.store, self.keys, self.options.plan_timeout)
                self._check_capabilities(plan)
                code = self._loop(plan, beats)
        except CiflowError as exc:
            self._say(f"error: {exc}")
            code = exc.exit_code
            raise
        finally:
            self._pool.shutdown(wait=not self._hard_stop, cancel_futures=True)
            beats.stop()
            if self.liveness.jobs is not None:
                self.liveness.jobs.close()
            try:
                done = Done(
                    worker=self.worker_id,
                    exit_code=code,
                    at=time.time(),
                    store_ops=self._store_ops(),
                )
                self.store.create(self.keys.done_of(self.worker_id), encode(done), sole=True)
            except StoreError:
                pass
        return code

    def _store_ops(self) -> dict[str, int]:
        ops = dict(self.store.stats.counts)
        if self.liveness.jobs is not None and self.liveness.jobs.calls:
            ops["ListJobsForWorkflowRunAttempt"] = self.liveness.jobs.calls
        return ops

    def stop(self, hard: bool = False) -> None:
        """Drain: start nothing new; with ``hard``, also cancel running modules and hand back."""
        self._draining = True
        if hard:
            self._hard_stop = True
            with self._lock:
                running = list(self._running.values())
            for item in running:
                if item.engine is not None:
                    item.engine.interrupt()

    def _watch_jobs(self) -> str | None:
        """Where the CI's jobs API can be read, watch other workers' jobs with it.

        Returns this worker's own job id when that API lists it (then this worker needs no
        heartbeats: observers look its job up), else None.
        """
        if not self.store.profile.ci_jobs_liveness:
            return None
        jobs = GitHubJobs.from_env(os.environ)
        if jobs is None:
            return None
        try:
            states = jobs.statuses()
        except StoreError as exc:
            self._say(f"liveness: heartbeats ({exc})")
            jobs.close()
            return None
        self.liveness.jobs = jobs
        self.liveness.jobs_interval = self.heartbeat_timeout / 2
        job = os.environ.get("CIFLOW_JOB_ID", "")
        if job not in states:
            why = "CIFLOW_JOB_ID is not set" if not job else f"job {job} is not among the run's"
            self._say(f"liveness: heartbeats ({why}; the action sets it from job.check_run_id)")
            return None
        return job

    # ------------------------------------------------------------------ the loop

    def _check_capabilities(self, plan: DistributedExecutionPlan) -> None:
        mine = next((s for s in plan.slots if s.slot == self.options.slot), None)
        if mine is None:
            raise RequirementError(
                f"the plan has no slot {self.options.slot} (slots 0..{len(plan.slots) - 1}); "
                "start workers with --slot within the plan's range"
            )
        for item in mine.modules:
            if item.name not in self.pipeline.modules:
                raise CiflowError(
                    f"the plan names module {item.name!r}, which the pipeline file does not "
                    "define: plan and workers must use the same pipeline"
                )
        problems = unmet(self.pipeline.modules, [m.name for m in mine.modules], self.caps)
        if problems:
            raise RequirementError(
                f"slot {self.options.slot} cannot serve the modules planned for it: "
                f"{'; '.join(problems)}; fix the runner or its pool in the plan"
            )

    def _loop(self, plan: DistributedExecutionPlan, beats: HeartbeatThread) -> int:
        names = list(plan.inputs.modules)
        owner = {m.name: s.slot for s in plan.slots for m in s.modules}
        position = {name: i for i, name in enumerate(names)}
        mine = [m.name for s in plan.slots if s.slot == self.options.slot for m in s.modules]
        start = {m.name: m.start for s in plan.slots for m in s.modules}
        mine_set = set(mine)
        self._slot_order = {s.slot: [m.name for m in s.modules] for s in plan.slots}
        others = sorted((n for n in names if n not in mine_set), key=start.__getitem__)
        order = mine + others
        next_slow = 0.0
        listed: list[str] | None = None
        # Where one list call sees everything anyway (github://), every poll lists the whole
        # namespace and serves all readers; elsewhere the fast poll watches results only.
        whole = self.store.profile.lists_everything
        while True:
            self._reraise()
            results = listed
            if whole and listed is not None:
                results = [k for k in listed if k.startswith(self.keys.results)]
            changed = self.results.refresh(results)
            if all(n in self.results.present for n in names):
                break
            now = time.monotonic()
            if now >= next_slow or (whole and listed is not None):
                everything = listed if whole and listed is not None else None
                if everything is None:
                    everything = self.store.list(self.keys.root)
                self._refresh_workers(everything)
                self._read_claims(everything)
                self._read_cancel(everything)
                self._read_alone(everything)
                self._listings += 1
                if now >= next_slow:
                    next_slow = now + self.slow_poll
            elif any(self.results.outcome(n) in _FAILING for n in changed):
                self._read_cancel()  # a failure just landed: its cancel record may be there
            with self._lock:
                beats.running = sorted(self._running)
            if not self._draining:
                if self._alone_wait is not None:
                    self._start_alone_when_quiet()
                elif self._paused():
                    self._ack_quiet()
                else:
                    self._act(order, owner, position)
            elif self._alone_wait is not None:
                self._drop_leases(self._alone_wait[2])  # hand it back, never started
                self._alone_wait = None
            elif not self._running:
                break  # drained: hand back what is left and leave
            if whole:
                seen = set(listed) if listed is not None else set()
                listed = self.store.wait(self.keys.root, seen, self.slow_poll)
                continue
            known = {self.keys.result(n) for n in self.results.present}
            wait = min(self.slow_poll, max(0.0, next_slow - time.monotonic()))
            listed = self.store.wait(self.keys.results, known, wait)
        self._pool.shutdown(wait=True)
        self._reraise()
        return 1 if self._ran_bad else (130 if self._draining and self._hard_stop else 0)

    def _read_claims(self, listed: list[str]) -> None:
        """Note the newest claim of each module and the steal requests (records read lazily).

        A claim record is read only when who holds it matters: some worker is dead (take
        over?), or this worker asked for the module (was it granted to us?).
        """
        claims, requests = self.keys.claims, self.keys.requests
        newest: dict[str, int] = {}
        asked: dict[str, list[str]] = {}
        for key in listed:
            if key.startswith(claims):
                module, _, number = key[len(claims) :].partition("/")
                if number.isdigit():
                    newest[module] = max(newest.get(module, 0), int(number))
            elif key.startswith(requests):
                module, _, worker = key[len(requests) :].partition("/")
                if worker:
                    asked.setdefault(module, []).append(worker)
        self._claim_attempts = newest
        self._requests = asked
        for module, attempt in newest.items():
            known = self._claims.get(module)
            if module in self.results.present or (known is not None and known[0] == attempt):
                continue
            if not self._dead and module not in self._asked:
                continue
            key = self.keys.claim(module, attempt)
            data = self.store.get(key)
            if data is not None:
                self._claims[module] = (attempt, decode(Claim, data, key=key))

    def _read_cancel(self, listed: list[str] | None = None) -> None:
        if self._cancel is not None or (listed is not None and self.keys.cancel not in listed):
            return
        data = self.store.get(self.keys.cancel)
        if data is None:
            return
        self._cancel = decode(CancelRecord, data, key=self.keys.cancel)
        self._say(f"run cancelled: {self._cancel.reason}")
        with self._lock:
            running = list(self._running.values())
        for item in running:
            if item.engine is not None:
                item.engine.cancel(self._cancel.reason)

    def _refresh_workers(self, listed: list[str]) -> None:
        """Registrations, deregistrations and heartbeats: who serves which slot, who is dead.

        Registrations and deregistrations never change once written: only new ones are read.
        """
        self.liveness.refresh(listed)
        for key in listed:  # worker ids carry their slot ("s<slot>-host-pid"): no reads needed
            if key.startswith(self.keys.workers) and key not in self._registrations:
                self._registrations[key] = key[len(self.keys.workers) :]
            elif key.startswith(self.keys.done) and key not in self._finished:
                self._finished[key] = key[len(self.keys.done) :]
        workers = list(self._registrations.values())
        finished = set(self._finished.values())
        if not self._running and any(job_of(w) for w in workers if w not in finished):
            error = self.liveness.jobs_error
            self.liveness.refresh_jobs()  # idle: is a job we wait for gone? (rate-limited)
            if self.liveness.jobs_error and self.liveness.jobs_error != error:
                self._say(f"warning: {self.liveness.jobs_error}")
        self._dead = self.liveness.dead(workers, finished)
        by_slot: dict[int, list[str]] = {}
        for worker in sorted(workers):
            slot = _slot_of(worker)
            if slot is not None:
                by_slot.setdefault(slot, []).append(worker)
        for slot, serving in by_slot.items():  # a slot's live worker, else its dead one
            live = [w for w in serving if w not in self._dead]
            self._slot_map[slot] = (live or serving)[0]
            if slot == self.options.slot and len(live) > 1 and not self._warned_twice:
                self._warned_twice = True
                others = ", ".join(w for w in live if w != self.worker_id)
                self._say(
                    f"warning: slot {slot} is also served by {others}: give each worker its own "
                    "--slot, or modules of this slot may run twice (the first result wins)"
                )

    def _act(self, order: list[str], owner: dict[str, int], position: dict[str, int]) -> None:
        for name in order:
            if name in self.results.present or name in self._running:
                continue
            mod = self.pipeline.modules[name]
            required = [d.name for d in mod.depends_on if not d.optional]
            optional = [d.name for d in mod.depends_on if d.optional and d.name in position]
            if any(d not in self.results.present for d in required + optional):
                continue  # not ready yet
            held = self._holding(name, owner.get(name, -1))
            if held is None:
                self._ask(name, owner)
                continue
            attempt, takeover_from, must_claim = held
            verdict = dependency_verdict({d: self.results.outcome(d) for d in required})  # type: ignore[misc]
            stopped = self._cancel is not None and not self.options.keep_going
            if (verdict is not None or stopped) and not mod.always_run:
                outcome, reason = verdict or (Outcome.CANCELLED, self._cancel.reason)  # type: ignore[union-attr]
                if not must_claim or self._claim(name, attempt, takeover_from):
                    self._resolve(name, attempt, outcome, reason)
                continue
            busy = len(self._running) >= self.options.jobs or (
                any(self.pipeline.modules[r].alone for r in self._running)
                or (mod.alone and bool(self._running))  # not_in_parallel=True: nothing else
            )
            if busy or mod.requires.missing(self.caps):
                if attempt == 1 and not must_claim and owner.get(name) == self.options.slot:
                    self._grant(name)  # it waits here: give it to a worker that asked
                continue
            leases = self._take_leases(name, attempt, mod, self._dead)
            if leases is None:
                continue
            if must_claim and not self._claim(name, attempt, takeover_from):
                self._drop_leases(leases)
                continue
            if takeover_from:
                self._say(f"taking over {name} from {takeover_from} (attempt {attempt})")
            _failpoint("after-claim", name)
            if mod.alone:
                # first the others go quiet; and whoever registered before our lease
                # must be in a listing made after it (two listings on, to be sure)
                self._alone_wait = (name, attempt, leases, self._listings + 2)
                return
            self._start(name, attempt, leases)

    def _holding(self, name: str, owner_slot: int) -> tuple[int, str | None, bool] | None:
        """Whether this worker may run (or resolve) ``name`` now, and as which attempt.

        Attempt 1 belongs to the planned slot, without a record, until that slot's worker
        grants it to a worker that asked; attempts after it are claimed explicitly, by taking
        over from a dead worker or from a slot no worker came for. Returns ``(attempt,
        takeover_from, must_claim)``, or None when the module is someone else's.
        """
        listed = self._claim_attempts.get(name, 0)
        if listed == 0:
            if owner_slot == self.options.slot:
                return 1, None, False  # ours by the plan
            owner_worker = self._slot_map.get(owner_slot)
            if owner_worker is None:
                return (2, None, True) if self._waited_long_enough() else None
            if owner_worker in self._dead:
                return 2, owner_worker, True
            return None
        known = self._claims.get(name)
        if known is None or known[0] != listed:
            return None  # claimed; the record was not read, as its holder is not dead
        holder = known[1].worker
        if holder == self.worker_id:
            return listed, None, False
        if holder in self._dead:
            return listed + 1, holder, True
        return None

    def _ask(self, name: str, owner: dict[str, int]) -> None:
        """Steal request: when idle, ask for a ready module its busy slot has not started."""
        if not self.options.steal or name in self._asked or self._claim_attempts.get(name):
            return
        now = time.monotonic()
        pending = [  # asked and not yet refused by silence, or granted and not yet started
            m for m, when in self._asked.items()
            if m not in self.results.present and m not in self._running
            and (self._granted_to(m) == self.worker_id
                 or (self._granted_to(m) is None and now - when < self._ask_expiry))
        ]  # fmt: skip
        if len(self._running) + len(pending) >= self.options.jobs:
            return
        if self.pipeline.modules[name].requires.missing(self.caps):
            return
        ready_since = self._ready_since.setdefault(name, now)
        if now - ready_since < self.options.steal_delay or not self._slot_busy(name, owner):
            return
        request = StealRequest(
            module=name, worker=self.worker_id, slot=self.options.slot, at=time.time()
        )
        self.store.create(self.keys.request(name, self.worker_id), encode(request), sole=True)
        self._asked[name] = now

    def _granted_to(self, name: str) -> str | None:
        known = self._claims.get(name)
        return None if known is None or known[0] != 1 else known[1].worker

    def _slot_busy(self, name: str, owner: dict[str, int]) -> bool:
        """Does ``name``'s slot have a module before it that is ready and not done?

        Its worker runs its modules in plan order, so it is then on that one and has not
        started ``name``: asking is worth it.
        """
        slot = owner.get(name, -1)
        for other in self._slot_order.get(slot, ()):
            if other == name:
                return False
            if other in self.results.present or self._claim_attempts.get(other):
                continue
            deps = self.pipeline.modules[other].depends_on
            if all(d.name in self.results.present or d.optional for d in deps):
                return True
        return False

    def _grant(self, name: str) -> None:
        """Give attempt 1 of our waiting module ``name`` to the first live worker that asked."""
        askers = [w for w in self._requests.get(name, ()) if w not in self._dead]
        if not askers or self._draining:
            return
        worker = askers[0]
        slot = _slot_of(worker)
        claim = Claim(
            module=name, attempt=1, worker=worker, slot=-1 if slot is None else slot,
            at=time.time(), granted_by=self.worker_id,
        )  # fmt: skip
        # only this slot's worker writes attempt 1 claims of its modules: no race to settle
        if self.store.create(self.keys.claim(name, 1), encode(claim), sole=True):
            self._claims[name] = (1, claim)
            self._claim_attempts[name] = 1
            self._say(f"{name} handed to {worker}, which asked for it")

    # ------------------------------------------------------------------ run alone

    def _read_alone(self, listed: list[str]) -> None:
        """Note a module another worker runs alone (not_in_parallel=True), and quiet workers."""
        self._quiet = {k for k in listed if k.startswith(self.keys.quiet_prefix)}
        key = self.keys.lease(_resource("@alone"), 0)
        if key not in listed:
            self._alone_seen = None
            return
        seen = self._alone_seen
        if seen is not None and seen.module not in self.results.present:
            if seen.worker not in self._dead:
                return  # the same episode, still on
        if self._alone_wait is not None or any(
            self.pipeline.modules[r].alone for r in self._running
        ):
            return  # the lease is ours
        data = self.store.get(key)
        self._alone_seen = None if data is None else decode(Lease, data, key=key)

    def _paused(self) -> bool:
        """Does a module run alone on another worker (or wait for the others to go quiet)?"""
        seen = self._alone_seen
        return (
            seen is not None
            and seen.worker != self.worker_id
            and seen.module not in self.results.present
            and seen.worker not in self._dead
        )

    def _ack_quiet(self) -> None:
        """Paused: once nothing runs here, tell the alone module's worker so (once)."""
        seen = self._alone_seen
        if seen is None or self._running or (seen.module, seen.attempt) in self._acked:
            return
        record = json.dumps({"worker": self.worker_id, "at": time.time()}).encode()
        self.store.create(self.keys.quiet(seen.module, seen.attempt, self.worker_id), record,
                          sole=True)  # fmt: skip
        self._acked.add((seen.module, seen.attempt))
        self._say(f"quiet while {seen.module} runs alone on {seen.worker}")

    def _start_alone_when_quiet(self) -> None:
        """Start our run-alone module once every other live worker is quiet."""
        assert self._alone_wait is not None
        name, attempt, leases, listing = self._alone_wait
        if self._running or self._listings < listing:
            return
        missing = [
            w for w in self._registrations.values()
            if w != self.worker_id and w not in self._dead
            and self.keys.quiet(name, attempt, w) not in self._quiet
        ]  # fmt: skip
        if missing:
            return
        self._alone_wait = None
        self._start(name, attempt, leases)

    def _waited_long_enough(self) -> bool:
        return time.monotonic() - self._started > self.heartbeat_timeout

    def _claim(self, name: str, attempt: int, takeover_from: str | None) -> bool:
        claim = Claim(
            module=name, attempt=attempt, worker=self.worker_id, slot=self.options.slot,
            at=time.time(), takeover_from=takeover_from,
        )  # fmt: skip
        key = self.keys.claim(name, attempt)
        won = self.store.create(key, encode(claim))
        if won:
            self._claims[name] = (attempt, claim)
            self._claim_attempts[name] = attempt
        else:  # someone else was first: remember who, for takeover decisions
            data = self.store.get(key)
            if data is not None:
                self._claims[name] = (attempt, decode(Claim, data, key=key))
        return won

    def _resolve(self, name: str, attempt: int, outcome: Outcome, reason: str) -> None:
        """Record the outcome of a module this worker holds that will not run."""
        record = ModuleRecord(name, outcome=outcome, worker=self.worker_id, slot=self.options.slot)
        if outcome is Outcome.SKIPPED:
            record.skip_reason = reason
        else:
            record.error = reason
        self.console.module_finished(record)
        deps = [d.name for d in self.pipeline.modules[name].depends_on]
        publish_result(
            self.store, self.keys, record, attempt=attempt, worker=self.worker_id,
            slot=self.options.slot, workdir=self.options.workdir, cache=self.results,
            upstream=self.results.upstream_outputs(deps),
        )  # fmt: skip

    # ------------------------------------------------------------------ leases

    def _take_leases(self, name: str, attempt: int, mod: Any, dead: set[str]) -> list[str] | None:
        wanted: list[tuple[str, int]] = [(k, 1) for k in sorted(mod.not_in_parallel)]
        if mod.alone:
            wanted.append(("@alone", 1))
        if mod.parallel_limit is not None:
            wanted.append((f"limit:{mod.parallel_limit.name}", mod.parallel_limit.count))
        taken: list[str] = []
        for resource, places in wanted:
            key = self._lease(name, attempt, _resource(resource), places, dead)
            if key is None:
                self._drop_leases(taken)
                return None
            taken.append(key)
        return taken

    def _lease(
        self, name: str, attempt: int, resource: str, places: int, dead: set[str]
    ) -> str | None:
        record = encode(
            Lease(resource=resource, module=name, attempt=attempt, worker=self.worker_id,
                  at=time.time())
        )  # fmt: skip
        for place in range(places):
            key = self.keys.lease(resource, place)
            if self.store.create(key, record):
                return key
            data = self.store.get(key)
            if data is None:
                continue
            holder = decode(Lease, data, key=key)
            if holder.worker in dead:  # its worker died holding it: free it and try again
                self.store.delete(key)
                if self.store.create(key, record):
                    return key
        return None

    def _drop_leases(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except StoreError as exc:
                self._say(f"warning: cannot release lease {key}: {exc}")

    # ------------------------------------------------------------------ running

    def _start(self, name: str, attempt: int, leases: list[str]) -> None:
        item = _Running(name, attempt, leases)
        with self._lock:
            self._running[name] = item
        item.future = self._pool.submit(self._execute, item)

    def _execute(self, item: _Running) -> None:
        name = item.module
        try:
            mod = self.pipeline.modules[name]
            provided: dict[str, Any] = {}
            for dep in mod.depends_on:
                if dep.name not in self.results.present:
                    continue
                if self.results.outcome(dep.name) in (Outcome.SUCCEEDED, Outcome.CACHED):
                    binding = self.pipeline.bindings[dep.name].result
                    provided[dep.name] = binding.decode(self.results.payload(dep.name), dep.name)
            # the files of the whole upstream, as in one workspace: outputs shipped by any
            # module upstream, restored in dependency order (later ones overwrite earlier ones)
            upstream = self.results.upstream_outputs(d.name for d in mod.depends_on)
            for source in [n for n in self.pipeline.order if n in upstream]:
                if source not in self._restored:
                    count = self.results.restore_outputs(
                        source, self.options.workdir, upstream[source]
                    )
                    self._restored.add(source)
                    self._say(f"restored {count} output file(s) of {source}")
            engine = Engine(
                self.pipeline,
                Selection((name,), frozenset()),
                console=self.console,
                jobs=1,
                keep_going=True,
                workdir=self.options.workdir,
                run_id=self.keys.run_id,
                handle_signals=False,
                provided=provided,
                worker=self.worker_id,
                slot=self.options.slot,
                announce=False,
            )
            item.engine = engine
            if self._cancel is not None and not self.options.keep_going:
                engine.cancel(self._cancel.reason)
            if self._hard_stop:
                engine.interrupt()
            result = engine.run()
            record = result.records[0]
            if result.interrupted and self._hard_stop:
                self._say(f"handing back {name} (stopped)")
                return  # no result: another worker takes it over when this one is gone
            _failpoint("before-result", name)
            written = publish_result(
                self.store, self.keys, record, attempt=item.attempt, worker=self.worker_id,
                slot=self.options.slot, workdir=self.options.workdir, outputs=mod.outputs,
                failpoint=lambda: _failpoint("after-outputs", name), cache=self.results,
                upstream=upstream,
            )  # fmt: skip
            self._restored.add(name)  # its files are in this workspace: never download them
            if not written:
                self._say(f"{name}: a result of another attempt was first; this one is dropped")
                return
            outcome = record.outcome or Outcome.CANCELLED
            if outcome.bad and outcome is not Outcome.CANCELLED:
                self._ran_bad.append(name)
                if not self.options.keep_going:
                    verb = "timed out" if outcome is Outcome.TIMED_OUT else "failed"
                    cancel = CancelRecord(
                        reason=f"cancelled after {name} {verb} on slot {self.options.slot}",
                        worker=self.worker_id,
                        at=time.time(),
                    )
                    self.store.create(self.keys.cancel, encode(cancel))
        except BaseException as exc:  # surfaced by the loop thread
            self._errors.append(exc)
        finally:
            self._drop_leases(item.leases)
            with self._lock:
                self._running.pop(name, None)

    def _reraise(self) -> None:
        if self._errors:
            raise self._errors[0]

    # ------------------------------------------------------------------ misc

    def _say(self, text: str) -> None:
        self.console.message(f"[worker {self.options.slot}] {text}")
