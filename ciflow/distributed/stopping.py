"""Cancel and stop: what a worker's state machine does when the run is cancelled or stopped.

Fail-fast's cancel record cancels what runs here (`events.StopRunning`) and resolves what has
not started; a signal drains (start nothing new) or stops hard (what runs is handed back). A
cancel or a stop can arrive while a module is being acquired (the answer to its `Acquire` in
the same batch, after it): `StopRunning` did not cover it, so `before_start` decides again, or
it would run to its end after ``run cancelled`` while every worker waits for its result.
See docs/architecture.md, "Stopping".
"""

from __future__ import annotations

from ..execution.policy import cannot_run, dependency_verdict
from ..model.outcome import Outcome
from .events import Instruction, Release, Resolve, Say, StopRunning
from .knowledge import Hold, Knowledge, Phase

__all__ = ["before_start", "cancelled", "stopped"]


def cancelled(st: Knowledge, reason: str, out: list[Instruction]) -> None:
    """The cancel record was read: stop what runs, resolve a run-alone module waiting here."""
    if st.cancel is not None:
        return
    st.cancel = reason
    out.append(Say(f"run cancelled: {reason}"))
    if not st.config.keep_going and st.running():
        out.append(StopRunning(reason, hard=False))
    waiting = st.alone.waiting  # ours, held, not started (waits for quiet): it must not start
    if waiting is not None:
        name = waiting[0]
        hold = st.holds[name]
        hold.resolve = _outcome(st, name)
        if hold.resolve is not None:
            st.alone.waiting = None
            st.move(name, Phase.RUNNING)
            out.append(Resolve(name, hold.attempt, *hold.resolve))


def stopped(st: Knowledge, hard: bool, out: list[Instruction]) -> None:
    """A signal: drain; ``hard``: also hand back what runs."""
    st.draining = True
    if hard and not st.hard:
        st.hard = True
        if st.running():
            out.append(StopRunning("stopped by a signal", hard=True))


def before_start(st: Knowledge, name: str, hold: Hold, now: float, out: list[Instruction]) -> bool:
    """``name`` was just acquired to run: False if a stop came meanwhile (it is handed back);
    after a cancel, ``hold.resolve`` says how it ends without running."""
    if hold.resolve is not None:
        return True
    if st.draining:
        if st.plan.modules[name].constraints:
            out.append(Release(name))
        out.append(Say(f"handing back {name} (stopped before it started)"))
        st.let_go(name, now)
        return False
    hold.resolve = _outcome(st, name)
    return True


def _outcome(st: Knowledge, name: str) -> tuple[Outcome, str] | None:
    """How held ``name`` ends without running, now that the run is cancelled (if so)."""
    if st.cancel is None or st.config.keep_going:
        return None
    verdict = dependency_verdict({d: st.outcomes[d] for d in st.plan.required[name]})
    return cannot_run(st.plan.modules[name], verdict, st.cancel)


def exit_code(st: Knowledge, out: list[Instruction]) -> int:
    """How the worker ends: 1 when anything of the run failed, here or elsewhere (a job that
    did not re-run a failure must not turn green on "Re-run failed jobs"), 130 after a hard
    stop, else 0."""
    code = 1 if st.ran_bad else (130 if st.draining and st.hard else 0)
    failed = [n for n in st.plan.modules if (o := st.outcomes.get(n)) is not None and o.bad]
    if code == 0 and failed:
        shown = ", ".join(failed[:5]) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
        out.append(
            Say(f"the run has {len(failed)} failed module(s) this worker did not run ({shown}): "
                "exit 1")
        )  # fmt: skip
        code = 1
    return code
