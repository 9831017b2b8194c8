"""Run alone (``not_in_parallel=True``) across workers: the others finish and go quiet first.

The module's worker takes the run-alone lease (a resource every such module holds), then waits
until every other live worker has written a quiet record for this attempt, and until two of its
own whole listings were made after the lease (so a worker that registered meanwhile is seen).
A worker that sees another's run-alone lease starts nothing new, and once nothing runs on it,
says it is quiet (once per attempt); it resumes when that module's result is in.
"""

from __future__ import annotations

from collections.abc import Collection

from ..model.constraints import ALONE
from .events import AloneRead, GoQuiet, Instruction, ReadAlone, Release, Say, Start
from .keys import lease_resource
from .knowledge import Knowledge, Phase

__all__ = ["give_up", "go_quiet", "listed", "paused", "read", "start_when_quiet"]


def listed(st: Knowledge, keys: Collection[str], out: list[Instruction]) -> None:
    """A whole listing: read the run-alone lease when it is there and news to us."""
    key = st.keys.lease(lease_resource(ALONE), 0)
    al = st.alone
    if key not in keys:
        al.seen = None
        return
    seen = al.seen
    if seen is not None and seen[0] not in st.outcomes and seen[2] not in st.dead:
        return  # the same episode, still on
    if al.waiting is not None or any(st.plan.modules[n].constraints.alone for n in st.holds):
        return  # the lease is ours
    if not al.reading:
        al.reading = True
        out.append(ReadAlone())


def read(st: Knowledge, event: AloneRead) -> None:
    st.alone.reading = False
    if event.module is None or event.worker == st.config.worker:
        st.alone.seen = None
    else:
        st.alone.seen = (event.module, event.attempt, event.worker)


def paused(st: Knowledge) -> bool:
    """Does a module run alone on another worker (or wait for the others to go quiet)?"""
    seen = st.alone.seen
    return seen is not None and seen[0] not in st.outcomes and seen[2] not in st.dead


def go_quiet(st: Knowledge, out: list[Instruction]) -> None:
    """Paused: once nothing runs here, tell the run-alone module's worker so (once)."""
    seen = st.alone.seen
    if seen is None or st.executing() or (seen[0], seen[1]) in st.alone.acked:
        return
    st.alone.acked.add((seen[0], seen[1]))
    out.append(GoQuiet(seen[0], seen[1], seen[2]))
    out.append(Say(f"quiet while {seen[0]} runs alone on {seen[2]}"))


def start_when_quiet(st: Knowledge, now: float, out: list[Instruction]) -> None:
    """Start our run-alone module once every other live worker is quiet."""
    assert st.alone.waiting is not None
    name, attempt, listing = st.alone.waiting
    if name in st.outcomes:  # someone else's result came first
        st.alone.waiting = None
        out.append(Release(name))
        st.let_go(name, now)
        return
    if any(n != name for n in st.executing()) or st.listings < listing:
        return
    me = st.config.worker
    if any((name, attempt, w) not in st.alone.quiet for w in st.live_workers() if w != me):
        return
    st.alone.waiting = None
    st.move(name, Phase.RUNNING)
    out.append(Start(name, attempt))


def give_up(st: Knowledge, now: float, out: list[Instruction]) -> None:
    """Draining: hand back our run-alone module that has not started."""
    if st.alone.waiting is None:
        return
    name = st.alone.waiting[0]
    st.alone.waiting = None
    out.append(Release(name))
    st.let_go(name, now)
