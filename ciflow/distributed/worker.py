"""``ciflow worker``: one process of a distributed run, sharing nothing but the store.

The worker registers and heartbeats, waits for the plan, then runs its state machine
(`state.WorkerState`) in this thread: events come in one queue (what the `watch.Watcher`
thread listed, what the `executor.ModuleExecutor` threads finished, signals, the clock) and
every instruction the machine returns is carried out here, one at a time, its answer fed
back as the next event. Only this thread reads or changes what the worker knows, so there is
no shared state to race on. See docs/architecture.md, "The worker".
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .._signals import catching_signals
from ..errors import CiflowError, ExitCode, Interrupted, RequirementError, UsageError
from ..model.outcome import Outcome
from ..model.pipeline import Pipeline
from ..model.requirements import Capabilities, unmet
from ..model.spec import changed_field
from ..planning.planner import DistributedExecutionPlan
from ..providers.registry import current
from ..stores.base import Store, StoreError
from ..ui.console import Console
from . import records
from .actions import Actions
from .cadence import Forecast, Outlook
from .events import (
    Event,
    Finish,
    Started,
    Stop,
    Tick,
)  # fmt: skip
from .executor import Crashed, Identity, ModuleExecutor
from .keys import RunKeys
from .knowledge import Config, PlanView, slot_of
from .liveness import HeartbeatThread, Liveness, new_worker_id, register
from .messages import Done, encode
from .results import ResultCache
from .state import WorkerState
from .watch import Watcher

if TYPE_CHECKING:
    from ..cache.session import ModuleCache
    from .resume import Carried

__all__ = ["Worker", "WorkerOptions", "read_plan"]

#: the longest the loop waits for an event before it checks its clocks again
TICK = 0.05


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
    serve_timeout: float = 60.0  # a ready module no live worker can serve fails after this
    slow_poll: float | None = None  # how often the run's namespace is listed (default: store's)
    steal_delay: float = 0.1  # a module must be ready this long before another slot takes it
    tags: tuple[str, ...] = ()
    runs_on: str | None = None
    workdir: Path = field(default_factory=Path.cwd)
    cache: str | None = None  # the result cache's store URL (None: no cache)
    rebuild: tuple[str, ...] = ()  # modules whose cache hits are ignored
    attempt: int | None = None  # the CI run attempt (a later one resumes the run: resume.py)


def read_plan(
    store: Store, keys: RunKeys, timeout: float, stop: threading.Event | None = None
) -> DistributedExecutionPlan:
    """Wait up to ``timeout`` for the run's plan in the store and parse it.

    ``stop`` (set by a signal) ends the wait at once with `Interrupted`.
    """
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
        if stop is not None and stop.wait(min(remaining, store.poll, 0.5)):
            raise Interrupted("stopped while waiting for the plan")
        store.wait(keys.plan, (), min(remaining, 0.5))


def _parse_plan(data: bytes, key: str) -> DistributedExecutionPlan:
    from pydantic import ValidationError

    try:
        return DistributedExecutionPlan.model_validate_json(data)
    except ValidationError as exc:
        raise StoreError(
            f"plan {key} is not a valid ciflow plan: {exc.errors()[0]['msg']}"
        ) from None


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
        self.options = options
        self.console = console or Console()
        self.worker_id = new_worker_id(options.slot)
        tools = {t for m in pipeline.modules.values() for t in m.requires.tools}
        self.caps = Capabilities.detect(tools, options.tags, options.jobs)
        beat = options.heartbeat_interval or store.profile.heartbeat
        self.heartbeat_interval = beat
        self.heartbeat_timeout = options.heartbeat_timeout or max(10.0, 4 * beat)
        self.slow_poll = options.slow_poll or store.profile.slow_poll
        self._use_keys(RunKeys(run_id))
        #: a later CI attempt resuming the run: the plan and what earlier attempts finished
        self._resumed: tuple[DistributedExecutionPlan, Carried | None] | None = None
        self._inbox: queue.SimpleQueue[Event | Crashed] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._signals = 0
        #: before the run proper ("registering", "waiting for the plan") a signal raises
        #: `Interrupted` wherever the main thread is; None once modules may run
        self._phase: str | None = None
        self._contested = False
        self._warned_twice = False
        self._finish_at: dict[str, float] = {}
        self._definition_errors: list[str] = []  # the executor's list, for the deregistration

    def _use_keys(self, keys: RunKeys) -> None:
        self.keys = keys
        self.results = ResultCache(self.store, keys)
        self.liveness = Liveness(self.store, keys, self.heartbeat_timeout)

    def _resume(self) -> None:
        """In a later CI attempt of a planned run, resume it: own keys, carried results."""
        from .resume import resume_run

        attempt = self.options.attempt
        found = None
        if attempt is not None and attempt > 1:
            found = resume_run(
                self.store, self.keys, attempt, self.pipeline, _parse_plan, self._say
            )
        if found is not None:
            self._use_keys(found.keys)
            if found.carried is not None:
                c = found.carried
                self.results.carry(c.headers, c.payloads, c.store or self.store, c.outputs)
            self._resumed = (found.plan, found.carried)

    # ------------------------------------------------------------------ public

    def run(self) -> int:
        """Register, run until every module of the plan has a result, deregister.

        SIGTERM drains, SIGINT (or a second signal) stops hard, in every phase: registration,
        the plan wait, the run.
        """
        with catching_signals(self._on_signal):
            return self._run()

    def _run(self) -> int:
        self._phase = "registering"  # until the plan is read, a signal abandons the store call
        registered = False
        try:
            self._resume()
            own_job = self._watch_jobs()
            if own_job is not None:
                self.worker_id = new_worker_id(self.options.slot, own_job)
            reg = register(
                self.store, self.keys, self.worker_id, self.options.slot, self.caps,
                self.options.runs_on,
            )  # fmt: skip
            registered, self._phase = True, "waiting for the plan"  # from here on, by its name
            self._say(f"registered as {reg.worker} (slot {reg.slot}, {reg.os}/{reg.arch})")
            self._contested = self._hold_slot()
            self._phase = None  # a signal from here to the plan wait sets only the stop flag
        except Interrupted as exc:
            self._say(str(exc))
            if registered:
                self._leave(exc.exit_code)
            return exc.exit_code
        # the registration is the first sign of life: the first beat follows one interval later
        beats = HeartbeatThread(
            self.store, self.keys, self.worker_id, self.heartbeat_interval,
            longest=self.heartbeat_timeout / 2, say=self._say,
        )  # fmt: skip
        if own_job is None:
            beats.start()
        else:
            self._say(f"liveness: the jobs API watches job {own_job}; no heartbeats")
        code: int = ExitCode.USAGE
        try:
            self._phase = "waiting for the plan"
            plan = (
                self._resumed[0] if self._resumed is not None
                else read_plan(self.store, self.keys, self.options.plan_timeout, self._stopped)
            )  # fmt: skip
            self._phase = None
            self._check_plan(plan)
            code = self._loop(plan, beats)
        except Interrupted as exc:
            self._phase = None
            self._say(str(exc))
            code = exc.exit_code
        except CiflowError as exc:
            self._say(f"error: {exc}")
            code = exc.exit_code
            raise
        finally:
            beats.stop()
            self._leave(code)
        return code

    def _hold_slot(self) -> bool:
        """Record that this worker serves its slot; True if the slot was given up or taken first.

        Then this worker claims its own modules explicitly (see `slots`).
        """
        slot = self.options.slot
        try:
            record = records.hold_slot(self.store, self.keys, slot, self.worker_id, False)
        except StoreError as exc:  # unknown whether it was written: take the safe side
            self._say(f"warning: cannot record slot {slot} ({exc})")
            record = None
        if record is not None and record.worker == self.worker_id and not record.given_up:
            return False
        why = (
            "cannot be read" if record is None
            else "was given up for lost by " + record.worker if record.given_up
            else "is served by " + record.worker
        )  # fmt: skip
        self._say(f"slot {slot} {why}: this worker claims its modules like any other's")
        return True

    def stop(self, hard: bool = False) -> None:
        """Drain: start nothing new; with ``hard``, also stop running modules and hand back."""
        self._stopped.set()
        self._inbox.put(Stop(time.monotonic(), hard))

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        self.stop(hard=self._signals > 1 or signum == signal.SIGINT)
        phase, self._phase = self._phase, None
        if phase is not None:  # nothing runs yet: end at once, even inside a slow store call
            raise Interrupted(f"stopped while {phase}")

    def _leave(self, code: int) -> None:
        if self.liveness.jobs is not None:
            self.liveness.jobs.close()
        ops = dict(self.store.stats.counts)
        if self.liveness.jobs is not None and self.liveness.jobs.calls:
            ops["ListJobsForWorkflowRunAttempt"] = self.liveness.jobs.calls
        done = Done(
            worker=self.worker_id, exit_code=code, at=time.time(), store_ops=ops,
            definition_errors=list(self._definition_errors),
        )  # fmt: skip
        try:
            self.store.create(self.keys.done_of(self.worker_id), encode(done), sole=True)
        except StoreError:
            pass

    def _watch_jobs(self) -> str | None:
        """Where the CI's jobs API can be read, watch other workers' jobs with it.

        Returns this worker's own job id when that API lists it (then this worker needs no
        heartbeats: observers look its job up), else None.
        """
        if not self.store.profile.ci_jobs_liveness:
            return None
        provider = current()
        jobs = provider.jobs_api(os.environ)
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
        self.liveness.say = self._say  # the fallback to heartbeats says so (budget, rate limit)
        job = provider.job_id(os.environ) or ""
        if job not in states:
            why = "CIFLOW_JOB_ID is not set" if not job else f"job {job} is not among the run's"
            self._say(f"liveness: heartbeats ({why}; the action sets it from job.check_run_id)")
            return None
        self.liveness.heartbeats = lambda: HeartbeatThread(  # started by the fallback, if any
            self.store, self.keys, self.worker_id, self.heartbeat_interval,
            longest=self.heartbeat_timeout / 2, say=self._say,
        )  # fmt: skip
        return job

    def _check_plan(self, plan: DistributedExecutionPlan) -> None:
        mine = next((s for s in plan.slots if s.slot == self.options.slot), None)
        if mine is None:
            raise RequirementError(
                f"the plan has no slot {self.options.slot} (slots 0..{len(plan.slots) - 1}); "
                "start workers with --slot within the plan's range"
            )
        for name in plan.inputs.modules:
            if name not in self.pipeline.modules:
                raise UsageError(
                    f"the plan names module {name!r}, which the pipeline file does not "
                    "define: plan and workers must use the same pipeline"
                )
            planned = plan.inputs.specs.get(name)
            field = None if planned is None else changed_field(planned, self.pipeline[name])
            if field is not None:
                raise UsageError(
                    f"module {name!r} differs from the plan: its {field} changed since "
                    "`ciflow plan` ran; plan and workers must use the same pipeline file "
                    "(re-run the plan job, or check out the commit the plan was made from)"
                )
        problems = unmet(self.pipeline.modules, [m.name for m in mine.modules], self.caps)
        if problems:
            raise RequirementError(
                f"slot {self.options.slot} cannot serve the modules planned for it: "
                f"{'; '.join(problems)}; fix the runner or its pool in the plan"
            )

    # ------------------------------------------------------------------ the loop

    def _machine(self, plan: DistributedExecutionPlan) -> WorkerState:
        names = list(plan.inputs.modules)
        slot = self.options.slot
        owner = {m.name: s.slot for s in plan.slots for m in s.modules}
        start = {m.name: m.start for s in plan.slots for m in s.modules}
        self._finish_at = {m.name: m.finish for s in plan.slots for m in s.modules}
        mine = [m.name for s in plan.slots if s.slot == slot for m in s.modules]
        mine_set = set(mine)
        others = sorted((n for n in names if n not in mine_set), key=start.__getitem__)
        mods = self.pipeline.modules
        view = PlanView(
            modules=mods,
            owner=owner,
            order=mine + others,
            slot_order={s.slot: [m.name for m in s.modules] for s in plan.slots},
            unable=frozenset(n for n in names if mods[n].requires.missing(self.caps)),
            start=start,
            cost={m.name: m.finish - m.start for s in plan.slots for m in s.modules},
            carried=self._carried_outcomes(),
        )
        config = Config(
            worker=self.worker_id,
            slot=slot,
            jobs=self.options.jobs,
            steal=self.options.steal,
            keep_going=self.options.keep_going,
            heartbeat_timeout=self.heartbeat_timeout,
            unservable_timeout=self.options.serve_timeout,
            steal_delay=self.options.steal_delay,
            ask_expiry=4 * max(self.slow_poll, self.store.poll) + 1.0,
            contested=self._contested,
        )
        return WorkerState(plan=view, config=config, keys=self.keys)

    def _carried_outcomes(self) -> dict[str, Outcome]:
        carried = self._resumed[1] if self._resumed is not None else None
        return carried.outcomes() if carried is not None else {}

    def _cache(self) -> ModuleCache | None:
        """The result cache (`WorkerOptions.cache`), or None."""
        if self.options.cache is None:
            return None
        from ..cache.session import ModuleCache
        from ..stores.registry import open_store

        return ModuleCache(
            open_store(self.options.cache), self.pipeline, workdir=self.options.workdir,
            rebuild=self.options.rebuild, warn=lambda line: self._say(line),
        )  # fmt: skip

    def _loop(self, plan: DistributedExecutionPlan, beats: HeartbeatThread) -> int:
        state = self._machine(plan)
        me = Identity(
            self.worker_id, self.options.slot, self.keys, self.options.workdir,
            self.options.keep_going, self.options.attempt,
        )  # fmt: skip
        executor = ModuleExecutor(
            self.pipeline, self.store, self.results, me, self.console, self._inbox.put,
            self.options.jobs, self._cache(),
        )  # fmt: skip
        self._definition_errors = executor.definition_errors
        actions = Actions(
            self.pipeline, self.store, self.results, me, executor, self.console, self._say,
            state.outcomes,
        )  # fmt: skip
        watcher = Watcher(
            self.store, self.keys, self.liveness, self._inbox.put, self._say,
            slow_poll=self.slow_poll,
        )  # fmt: skip
        forecast = Forecast(self._finish_at)  # what the watcher looks for, by the plan
        pending: deque[Event] = deque([Started(time.monotonic())])
        watcher.start()
        code = 0
        try:
            while not state.over:
                self._gather(pending)
                batch = list(pending)
                pending.clear()
                for instruction in state.handle(*batch):
                    if isinstance(instruction, Finish):
                        code = instruction.code
                        continue
                    answer = actions.do(instruction)
                    if answer is not None:
                        pending.append(answer)
                beats.running = state.running()
                watcher.expect(self._due(state, forecast))
                self._warn_twice(state)
                self.console.tick()
        finally:
            watcher.stop()
            executor.shutdown(wait=not state.hard)
        if code == ExitCode.FAILED and executor.definition_errors:
            return ExitCode.USAGE  # a result broke its annotation: the pipeline file is wrong
        return code

    def _gather(self, pending: deque[Event]) -> None:
        """Wait (at most `TICK`) for events unless some are pending; take all that came."""
        inbox = self._inbox
        while True:
            try:
                item = inbox.get(block=not pending, timeout=TICK)
            except queue.Empty:
                if not pending:
                    pending.append(Tick(time.monotonic()))
                return
            if isinstance(item, Crashed):
                raise item.error
            pending.append(item)

    def _due(self, state: WorkerState, forecast: Forecast) -> Outlook:
        """What the watcher looks for now: when the next result this worker waits on is due
        by the plan, corrected by how late the results came (None while every job slot is
        busy), and whether it waits on another worker's record (`cadence.Forecast`)."""
        return forecast.outlook(state, time.monotonic())

    def _warn_twice(self, state: WorkerState) -> None:
        if self._warned_twice:
            return
        me = self.worker_id
        others = [
            w for w in state.live_workers() if w != me and slot_of(w) == self.options.slot
        ]  # fmt: skip
        if others:
            self._warned_twice = True
            self._say(
                f"warning: slot {self.options.slot} is also served by {', '.join(others)}: "
                "give each worker its own --slot, or modules of this slot may run twice "
                "(the first result wins)"
            )

    # ------------------------------------------------------------------ instructions

    def _say(self, text: str) -> None:
        self.console.message(f"[worker {self.options.slot}] {text}")
