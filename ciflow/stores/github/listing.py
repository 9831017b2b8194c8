"""What a ``github://`` store knows of its run's artifacts: entries, whose value counts, listings.

An `Entry` is one artifact as ListArtifacts describes it. Only finalized artifacts are values:
CreateArtifact sends no size, so an artifact listed with size 0 was never finalized (ciflow
never stores 0 bytes: a value is a ZIP archive). A key's value is its `winner`: of its
finalized artifacts in every generation (`ciflow.stores.github.naming.generation_name`), the
one of the lowest generation, then the lowest id, then the earliest ``created_at``.

`View` keeps the newest listing (what `list`, `wait` and `exists` answer from), the winner of
every name seen (what `get` downloads without listing again) and the artifacts this store
created and won. ListArtifacts cannot page, and a service may answer only part of a run
(docs/architecture.md, "The github store and GitHub's artifact service"): once a listing is
shown to be cut (an artifact of ours, found by name, is missing from it), every listing at
least that long is taken as a part, and what earlier listings showed is kept beside it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .naming import name_generation
from .twirp import get_field

__all__ = ["Entry", "View", "winner"]


@dataclass(frozen=True)
class Entry:
    """One artifact of the run, as listed."""

    name: str
    job_id: str
    id: int
    created_at: str
    size: int = 1

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Entry:
        def number(field: str) -> int:
            try:
                return int(get_field(raw, field) or 0)
            except (TypeError, ValueError):
                return 0

        created = get_field(raw, "created_at")
        return cls(
            name=str(raw.get("name") or ""),
            job_id=str(get_field(raw, "workflow_job_run_backend_id") or ""),
            id=number("database_id"),
            created_at=created if isinstance(created, str) else json.dumps(created),
            size=number("size"),
        )

    @property
    def base(self) -> str:
        """The name of generation 0 (the key's own artifact name)."""
        return name_generation(self.name)[0]

    @property
    def generation(self) -> int:
        return name_generation(self.name)[1]

    @property
    def value(self) -> bool:
        """Finalized: it holds a value (an unfinalized artifact is listed with size 0)."""
        return self.size > 0

    def order(self) -> tuple[int, int, str]:
        """Earliest first: generation, id, creation time."""
        return self.generation, self.id, self.created_at

    @property
    def ident(self) -> tuple[str, str, int]:
        """What tells artifacts apart (a listing and our own note differ in ``created_at``)."""
        return self.name, self.job_id, self.id

    def same(self, other: Entry) -> bool:
        return self.ident == other.ident


def winner(entries: Iterable[Entry]) -> Entry | None:
    """The entry holding the value of a key among ``entries`` of its names, or None."""
    return min((e for e in entries if e.value), key=Entry.order, default=None)


class View:
    """The newest listing of one store and what it knows besides; thread-safe.

    ``changed`` is notified by every listing (waiters wake on it).
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.stamp = float("-inf")  # monotonic time of the newest listing
        self.entries: list[Entry] = []  # its finalized entries (with ours since), earliest first
        self.winners: dict[str, Entry] = {}  # base name -> winner, from listings and our creates
        self.own: dict[str, Entry] = {}  # base name -> our winning entry, not deleted since
        #: a listing of this many entries or more may be a part of the run (None: none seen)
        self.cap: int | None = None
        self.size = 0  # entries in the newest listing, finalized or not
        self._won_at: dict[tuple[str, str, int], float] = {}  # our entries: when we won them
        self._deleted: set[tuple[str, str, int]] = set()  # artifacts known gone
        #: what listings showed (by `Entry.ident`), kept while listings are parts of the run
        self._kept: dict[tuple[str, str, int], Entry] = {}
        self._before: dict[tuple[str, str, int], Entry] = {}  # the kept ones before the newest
        self._sent = float("-inf")  # when the newest listing was asked for

    def note(self, raw: list[Entry], sent: float) -> list[Entry]:
        """Take an unfiltered listing asked for at monotonic ``sent``; return our entries it
        misses (to look up by name) while it is not known to be a part of the run."""
        values = sorted(
            (e for e in raw if e.value and e.ident not in self._deleted), key=Entry.order
        )
        with self.changed:
            part = self.cap is not None and len(raw) >= self.cap
            self._before = dict(self._kept)
            if part:
                self._kept.update((e.ident, e) for e in values)
            else:
                self._kept = {e.ident: e for e in values}
            missing = [
                e
                for e in self.own.values()
                if e.ident not in self._kept and self._won_at.get(e.ident, sent) < sent
            ]
            if part:
                missing = []
            elif self.cap is not None:  # a whole listing: what it misses is gone
                for entry in missing:
                    self.own.pop(entry.base, None)
                missing = []
            self.size, self._sent = len(raw), sent
            self._publish()
        return missing

    def cut(self) -> None:
        """The newest listing missed an artifact that exists: it was a part of the run."""
        with self.changed:
            self.cap = self.size if self.cap is None else min(self.cap, self.size)
            self._kept = {**self._before, **self._kept}
            self._publish()

    def _publish(self) -> None:
        """Make the kept entries and our own the newest listing (under ``changed``)."""
        merged = dict(self._kept)
        for entry in self.own.values():  # ours the listing could not show yet, or cut off
            if self.cap is not None or self._won_at.get(entry.ident, self._sent) >= self._sent:
                merged[entry.ident] = entry
        self.entries = sorted(merged.values(), key=Entry.order)
        by_base: dict[str, list[Entry]] = {}
        for entry in self.entries:
            by_base.setdefault(entry.base, []).append(entry)
        for base, found in by_base.items():
            best = winner(found)
            if best is not None:
                self.winners[base] = best
        self.stamp = time.monotonic()
        self.changed.notify_all()

    def suspect(self) -> bool:
        """Whether the newest listing may be a part of the run (a miss in it proves nothing)."""
        with self.changed:
            return self.cap is not None and self.size >= self.cap

    def snapshot(self) -> tuple[float, list[Entry]]:
        with self.changed:
            return self.stamp, list(self.entries)

    def won(self, entry: Entry) -> None:
        """An artifact this store just created and won."""
        with self.changed:
            self.own[entry.base] = entry
            self._won_at[entry.ident] = time.monotonic()
            self.winners[entry.base] = entry
            self.entries = sorted([*self.entries, entry], key=Entry.order)

    def gone(self, entry: Entry) -> None:
        """An artifact this store deleted, or found gone."""
        with self.changed:
            for known in (self.own, self.winners):
                if entry.base in known and known[entry.base].same(entry):
                    del known[entry.base]
            self._deleted.add(entry.ident)
            self._won_at.pop(entry.ident, None)
            self._kept.pop(entry.ident, None)
            self.entries = [e for e in self.entries if not e.same(entry)]

    def forget(self, base: str) -> None:
        """Drop what is known of a name's winner (it went: look again)."""
        with self.changed:
            self.winners.pop(base, None)
