"""The worker's eyes: one thread that lists the run's records and reports what changed.

How often it looks follows the plan (`cadence`): the worker's loop tells it, through
`Watcher.expect`, when the next result it waits on is due and whether it waits on another
worker's record. Stores that list everything in one call (``github://``) are listed whole at
every look, when `cadence.Cadence.next_look` says: ``slow_poll`` apart while nothing is due,
halfway to a due time as it nears, every ``poll`` once it has come, less often again when the
result is late. A listing the worker's own store made since the last look stands in for a
look. Other stores are listed whole every ``slow_poll`` (claims, requests, workers,
heartbeats, leases, the cancel record; liveness is worked out from it); in between only
``results/`` is watched, closely (the store's ``poll``) from `DUE_WINDOW` before a result is
due and not at all otherwise. Each poll reports only the keys that are new; stores that push
(`StoreProfile.pushes`) are waited on, not polled. See docs/architecture.md, "What a worker
reads, and how often".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..stores.base import Store, StoreError
from .cadence import Cadence, Outlook
from .events import Dead, Event, Listed
from .keys import RunKeys
from .liveness import Liveness

__all__ = ["DUE_WINDOW", "Watcher"]

#: how long before a result is due by the plan the watcher starts looking closely (estimates
#: are rough: a module may end this much earlier than planned without costing a hand-off)
DUE_WINDOW = 2.0


class Watcher(threading.Thread):
    """Lists the store for one worker and posts `Listed` and `Dead` events to its loop.

    `expect` tells it what the worker waits on (an `Outlook`); `stop` ends it. ``cadence``
    defaults to the store's (`Cadence.of` its ``poll`` and ``slow_poll``).
    """

    def __init__(
        self,
        store: Store,
        keys: RunKeys,
        liveness: Liveness,
        post: Callable[[Event], None],
        say: Callable[[str], None],
        *,
        slow_poll: float,
        cadence: Cadence | None = None,
    ) -> None:
        super().__init__(name="ciflow-watch", daemon=True)
        self.store = store
        self.keys = keys
        self.liveness = liveness
        self.post = post
        self.say = say
        self.slow_poll = slow_poll
        self.cadence = cadence or Cadence.of(store.poll, slow_poll)
        self.outlook = Outlook()
        self.due: float | None = None
        self.looks = 0  # whole listings looked at (made here, or by the store for a write)
        self._last_look: float | None = None
        self._halt = threading.Event()
        self._nudge = threading.Event()  # `expect` changed the outlook
        self._seen: set[str] = set()
        self._results: set[str] = set()
        self._workers: set[str] = set()
        self._finished: set[str] = set()
        self._dead: set[str] = set()
        self._failing: float | None = None
        self._troubled = store.stats.troubled
        self._next_whole = 0.0

    def stop(self) -> None:
        self._halt.set()
        self._nudge.set()

    def expect(self, outlook: Outlook) -> None:
        """What the worker waits on now (its due time: monotonic seconds, None: none)."""
        old, self.outlook, self.due = self.outlook, outlook, outlook.due
        if outlook != old:
            self._nudge.set()  # work the next look out again

    def run(self) -> None:
        next_whole = 0.0
        everything = self.store.profile.lists_everything
        while not self._halt.is_set():
            now = time.monotonic()
            try:
                if everything:
                    wait = self.step(now) - time.monotonic()
                    if wait > 0:  # until the next look, or until `expect` changes the outlook
                        self._nudge.wait(wait)
                        self._nudge.clear()
                elif now >= next_whole:
                    self._whole(self.store.list(self.keys.root), self._blind(now))
                    next_whole = time.monotonic() + self.slow_poll
                else:
                    self._next_whole = next_whole
                    self._results_until(next_whole)
            except StoreError as exc:  # the store is flaky: say so once, keep looking
                if self._failing is None:
                    self.say(f"warning: cannot list the store ({exc}); trying again")
                    self._failing = now
                self._halt.wait(min(self.slow_poll, 1.0))
                continue
            self._failing = None

    def step(self, now: float) -> float:
        """One turn on a store that lists everything in one call, at monotonic ``now``: look
        if the cadence says so; returns when (monotonic) the next look is due.

        A look takes a listing this process made since the last look (a create's read-back,
        a `list`) if there is one, else lists: each look is one listing not looked at before.
        """
        if self._last_look is None:
            self._last_look = now  # the first look, too, comes when the cadence says
        if self.cadence.next_look(self._last_look, now, self.outlook) <= now:
            self._look(self.store.wait(self.keys.root, self._seen, 0.0, 0.0), now)
        return self.cadence.next_look(self._last_look, now, self.outlook)

    def _look(self, keys: list[str], now: float) -> None:
        self._last_look = now
        self.looks += 1
        self._whole(keys, self._blind(now))

    def _blind(self, began: float) -> float:
        """Seconds this observer could not rely on the store before the listing that just
        ended: since its first failed try, or the listing's own time when retries made it
        long, and at least the time this process's calls spent failing and backing off since
        the last listing (its heartbeats' included: when the store fails this process, a
        worker whose beats are late may be failing the same way, and is not yet dead)."""
        took = time.monotonic() - began
        total = self.store.stats.troubled
        troubled, self._troubled = total - self._troubled, total
        if self._failing is not None:
            return max(troubled, time.monotonic() - self._failing)
        return max(troubled, took if took > self.liveness.timeout / 4 else 0.0)

    def _whole(self, keys: list[str], blind: float = 0.0) -> None:
        self._note(keys)
        self.liveness.refresh(keys, blind)
        self.liveness.refresh_jobs()  # rate-limited; a no-op without a jobs API
        dead = self.liveness.dead(self._workers, self._finished)
        if dead - self._dead - self._finished:
            # newly dead: list once more, from now, before anyone takes its modules over. The
            # jobs API (or a beat's silence) can be newer than the listing above, which then
            # may miss results the worker wrote just before it ended. (One that deregistered
            # wrote its results before its `done` record: the listing that shows it has them.)
            keys = self.store.list(self.keys.root)
            self._note(keys)
            self.liveness.refresh(keys)
        self._dead = dead
        now = time.monotonic()
        self.post(Listed(now, keys, whole=True))
        self.post(Dead(now, frozenset(dead)))

    def _note(self, keys: list[str]) -> None:
        """Remember the results, registrations and deregistrations among ``keys``."""
        parse = self.keys.parse
        for key in keys:
            if key in self._seen:
                continue
            self._seen.add(key)
            found = parse(key)
            if found is None:
                continue
            if found.kind == "result":
                self._results.add(key)
            elif found.kind == "worker":
                self._workers.add(found.worker)
            elif found.kind == "done":
                self._finished.add(found.worker)

    def _results_until(self, deadline: float) -> None:
        """Watch ``results/`` until something new appears or ``deadline`` passes."""
        now = time.monotonic()
        due = self.due
        if self.store.profile.pushes or (due is not None and due - now <= DUE_WINDOW):
            poll = self.store.poll  # a result is due (or nearly): look closely
        else:
            poll = self.slow_poll
            if due is not None:  # sleep until it is nearly due, then look closely
                deadline = min(deadline, max(due - DUE_WINDOW, now + self.store.poll))
        if poll == self.slow_poll and not self.store.profile.pushes:
            whole_next = deadline
            nudged = self._nudge.wait(max(0.0, deadline - now))
            self._nudge.clear()
            if nudged or self._halt.is_set() or whole_next >= self._next_whole:
                return  # look again as now due, or the whole listing sees the results too
            keys = self.store.list(self.keys.results)
        else:
            keys = self.store.wait(self.keys.results, self._results, deadline - now, poll)
        new = [k for k in keys if k not in self._results]
        if new:
            self._results.update(new)
            self._seen.update(new)
            self.post(Listed(time.monotonic(), new, whole=False))
