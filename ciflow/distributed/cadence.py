"""How often a worker looks at the store: by what the plan predicts (docs/architecture.md,
"What a worker reads, and how often").

`Forecast` turns the plan's finish times, shifted by how early or late this run's results
actually came (the drift), into an `Outlook`: when the next result this worker waits on is
due, and whether it is in an exchange with another worker (a steal request, the run-alone
protocol, a takeover's evidence). `Cadence.next_look` turns an outlook into the time of the
next look: late while nothing is due, halfway there as a due time nears, short from then until
a grace has passed, then growing with how late the result is; never more than ``slow`` apart.
Pure: time comes in as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

from ..model.outcome import Outcome
from .knowledge import Knowledge, Phase

__all__ = [
    "LAG", "LEAD", "LOOKAHEAD", "STEAL_MARGIN", "Cadence", "Forecast", "Outlook", "exchanging",
]  # fmt: skip

#: before a due time, the next look comes after this share of the time left
LEAD = 0.5
#: past the grace, the pause grows by this share of how late the result is
LAG = 0.5
#: how many of a slot's next modules (without a result) are candidates, per job
LOOKAHEAD = 4
#: how long (plan seconds) the plan must have a module wait for its slot to look for a steal
STEAL_MARGIN = 1.0
#: outcomes of modules that ran in this run (their arrival says how late the run is)
RAN = frozenset({Outcome.SUCCEEDED, Outcome.FAILED, Outcome.TIMED_OUT, Outcome.IGNORED_FAILURE})


@dataclass(frozen=True)
class Outlook:
    """What the watcher looks for: when a result this worker waits on is due (monotonic
    seconds, None: none it could use now), whether it waits on another worker's record, and
    whether it only waits for the run's end."""

    due: float | None = None
    exchange: bool = False
    ending: bool = False  # nothing left to start: the due result is the run's last


@dataclass(frozen=True)
class Cadence:
    """Pauses between a worker's looks at the store (seconds)."""

    fast: float  # the shortest pause: while a result is due
    slow: float  # the longest pause: claims, requests, the cancel record, deaths
    exchange: float  # the longest pause while waiting on another worker's record
    settle: float  # a due result is first looked for this long after its due time
    grace: float  # how long past that a result is looked for every `fast`

    @classmethod
    def of(cls, poll: float, slow_poll: float) -> Cadence:
        """The cadence of a store profile's ``poll`` (fast) and ``slow_poll`` (the longest)."""
        fast = min(poll, slow_poll)
        return cls(
            fast=fast, slow=slow_poll, exchange=max(fast, slow_poll / 4), settle=fast / 2,
            grace=2 * fast,
        )  # fmt: skip

    def next_look(self, last: float, now: float, outlook: Outlook) -> float:
        """When (monotonic) to look next, the last look having been at ``last``.

        Nothing due: ``slow`` after the last look (``exchange`` in an exchange). A result due
        later: halfway from the last look to its due time (so one that comes early is seen
        within half its earliness), at the due time once that is less than two ``fast``
        away. Due means ``settle`` after the predicted time (a look exactly then finds a
        result only about half the time: estimates are as often early as late; ``fast``
        after it for the run's last result, which only the worker's exit waits on). Past
        it, every ``fast`` for ``grace``, then the pause grows by `LAG` of how late the
        result is. Never sooner than ``fast`` after the last look, nor later than the
        longest pause; woken (``now``) past that time, at once, or at the due time if that
        is near.
        """
        longest = last + (self.exchange if outlook.exchange else self.slow)
        if outlook.due is None:
            return longest
        due = outlook.due + (self.fast if outlook.ending else self.settle)
        ahead = due - last
        if ahead > 2 * self.fast:
            when = last + LEAD * ahead
        elif ahead > 0:
            when = due
        else:
            when = last + self.fast + LAG * max(0.0, -ahead - self.grace)
        when = min(longest, max(last + self.fast, when))
        if when < now and 0 < due - now <= 2 * self.fast:
            return due  # woken just before the due time (a result of ours came): wait for it
        return when


class Forecast:
    """When the results a worker waits on are due, from the plan's ``finish`` times
    (seconds from the run's start) and the drift of the results that came.

    A *candidate* is a module this worker could start once its dependencies are in: one of
    the next `LOOKAHEAD` × jobs modules of its slot (or of a slot whose worker died), or,
    when it may steal, a module the plan has wait for its busy slot past its dependencies.
    A candidate is due when the last of its dependencies is (one this worker runs tells by
    itself, so it is no reason to look). With no candidate the worker waits for the run's
    end: the latest finish of the modules without a result.
    """

    def __init__(self, finish: Mapping[str, float]) -> None:
        self.finish = dict(finish)
        self.drift = 0.0
        self._known = -1  # outcomes already counted for the drift (-1: not started)
        self._held: set[str] = set()  # modules held here at the last look at the state
        self._free_since: float | None = None  # since when this worker may start something
        self._awaited: frozenset[str] = frozenset()  # the results the due time waits for
        self._signature: tuple[object, ...] | None = None
        self._planned: float | None = None  # plan seconds of the earliest due result
        self._ending = False  # ... which is the run's last (nothing left to start)
        self._next: dict[int, int] = {}  # slot -> index of its first module maybe without result
        self._stealable: list[str] | None = None
        self._last_first: list[str] = []  # modules by planned finish, latest first
        self._end = 0

    def outlook(self, st: Knowledge, now: float) -> Outlook:
        """The outlook of worker state ``st`` at monotonic ``now``."""
        if st.started_at is None:
            return Outlook()
        self._update_drift(st, st.started_at, now)
        signature = (len(st.outcomes), frozenset(st.holds), len(st.ready), st.dead, st.draining)
        if signature != self._signature:
            self._signature = signature
            self._planned, self._ending, self._awaited = self._earliest(st)
        exchange = exchanging(st)
        if len(st.executing()) >= st.config.jobs or self._planned is None:
            self._free_since = None  # busy, or nothing to wait for: no close look
            return Outlook(None, exchange)
        if self._free_since is None:
            self._free_since = now
        return Outlook(st.started_at + self.drift + self._planned, exchange, self._ending)

    def _update_drift(self, st: Knowledge, start: float, now: float) -> None:
        """How late results come against the plan: arrival minus planned finish.

        A result this worker ran sets it (its arrival is exact; the least of a batch). One
        learned from a listing only came by then: it sets the drift if it was the one this
        worker was looking for, predicted after it was free to look (so it was looked for
        closely), and otherwise only moves the drift earlier (one learned late, while this
        worker was busy or looking for another, says nothing of how late it was).
        """
        count = len(st.outcomes)
        if self._known < 0:  # outcomes known at the start (an earlier attempt's) did not run
            self._known, self._held = count, set(st.holds)
            return
        if count > self._known:
            new = [
                n for n in islice(st.outcomes, self._known, None)
                if n in self.finish and st.outcomes[n] in RAN
            ]  # fmt: skip
            self._known = count
            ours = {n for n in new if n in self._held or n in st.holds}
            if ours:
                self.drift = min(now - start - self.finish[n] for n in ours)
            drift, free, seen = self.drift, self._free_since, []
            for name in new:
                late = now - start - self.finish[name]
                looked = (
                    free is not None and name in self._awaited
                    and start + drift + self.finish[name] >= free
                )  # fmt: skip
                if name not in ours and (late < drift or looked):
                    seen.append(late)
            if seen:
                self.drift = min(seen)
        self._held = set(st.holds)

    def _earliest(self, st: Knowledge) -> tuple[float | None, bool, frozenset[str]]:
        """Plan seconds when the first candidate can start (else when the run's last result
        is due: True), and the results that time waits for; None: nothing to wait for."""
        best: float | None = None
        awaited: set[str] = set()
        for name in self._candidates(st):
            if st.phase[name] is not Phase.WAITING or name in st.plan.unable:
                continue
            pending = [d for d in st.plan.needs[name] if d not in st.outcomes]
            if not pending or any(d in st.holds for d in pending):
                continue  # ready, or it waits on a module that runs here: its end tells
            ready = max(self.finish.get(d, 0.0) for d in pending)
            if best is None or ready < best:
                best, awaited = ready, set()
            if ready == best:
                awaited.update(d for d in pending if self.finish.get(d, 0.0) == ready)
        if best is not None:
            return best, False, frozenset(awaited)
        last = self._run_end(st)
        if last is None:
            return None, True, frozenset()
        return self.finish[last], True, frozenset({last})

    def _candidates(self, st: Knowledge) -> list[str]:
        plan, cfg = st.plan, st.config
        slots = {cfg.slot} | {
            slot for slot in plan.slot_order
            if slot != cfg.slot and (w := st.slot_worker(slot)) is not None and w in st.dead
        }  # fmt: skip
        found: list[str] = []
        for slot in sorted(slots):
            found += self._next_of(st, slot, plan.slot_order.get(slot, []))
        if cfg.steal and not st.draining:
            if self._stealable is None:
                self._stealable = self._waiting_for_slot(st)
            left = [n for n in self._stealable if n not in st.outcomes and n not in st.holds]
            found += left[: LOOKAHEAD * cfg.jobs]
        return found

    def _next_of(self, st: Knowledge, slot: int, order: list[str]) -> list[str]:
        """The next modules of ``slot`` without a result that this worker does not hold."""
        first = self._next.get(slot, 0)
        while first < len(order) and order[first] in st.outcomes:
            first += 1
        self._next[slot] = first
        out: list[str] = []
        for name in order[first:]:
            if len(out) >= LOOKAHEAD * st.config.jobs:
                break
            if name not in st.outcomes and name not in st.holds:
                out.append(name)
        return out

    def _waiting_for_slot(self, st: Knowledge) -> list[str]:
        """Other slots' modules the plan has wait for their slot past their dependencies
        (worth a steal), by when their dependencies are due."""
        plan, out = st.plan, []
        for slot, order in plan.slot_order.items():
            if slot == st.config.slot:
                continue
            for before, name in zip(order, order[1:], strict=False):
                ready = max((self.finish.get(d, 0.0) for d in plan.needs[name]), default=0.0)
                if self.finish.get(before, 0.0) > ready + STEAL_MARGIN:
                    out.append((ready, name))
        return [name for _, name in sorted(out)]

    def _run_end(self, st: Knowledge) -> str | None:
        """The module whose result the run needs last (the worker's exit waits for it)."""
        if not self._last_first:
            self._last_first = sorted(self.finish, key=self.finish.__getitem__, reverse=True)
        order = self._last_first
        while self._end < len(order) and order[self._end] in st.outcomes:
            self._end += 1
        for name in order[self._end :]:
            if name not in st.outcomes and name not in st.holds:  # ours: its end tells
                return name
        return None


def exchanging(st: Knowledge) -> bool:
    """Does this worker wait on another worker's record rather than a result? A grant for
    its steal request, quiet records for its run-alone module, another attempt's result, or
    the listings a takeover needs as evidence."""
    if st.alone.waiting is not None or st.superseded:
        return True
    if any(st.phase[n] is Phase.ASKED for n in st.asked):
        return True
    return any(c.doubted_at is not None and n not in st.outcomes for n, c in st.claims.items())
