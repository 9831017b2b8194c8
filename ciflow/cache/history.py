"""Run history in the cache store, so the plan job on a fresh CI checkout knows the costs.

Each run that records writes one immutable record ``history/<stamp>-<id>``: the newest record
before it with this run's successful durations folded in (the EWMA of `planning.history`).
Readers take the newest record only (on GitHub: one prefix lookup in the Actions cache).
Two runs recording at once both start from the same record, so one of them is missing from the
next one's average: an estimate loses a sample, nothing breaks. Folder caches keep the newest
`KEEP` records (docs/architecture.md, "The result cache").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from ..errors import CiflowError
from ..model.outcome import ModuleRecord, Outcome
from ..planning.history import History
from ..stores.base import Store
from .entries import stamp

__all__ = ["KEEP", "PREFIX", "load_history", "record_run"]

PREFIX = "history/"
#: history records a folder cache keeps
KEEP = 20


def load_history(store: Store) -> History | None:
    """The newest history in ``store``; None if it has none (or it cannot be used)."""
    key = store.newest_key(PREFIX)
    if key is None:
        return None
    raw = store.get(key)
    if raw is None:
        return None
    try:
        return History.parse(raw, f"{store.url} {key}")
    except CiflowError:
        return None


def record_run(store: Store, records: Iterable[ModuleRecord]) -> bool:
    """Fold a run's durations into the newest history and write it; False if nothing ran."""
    ran = [r for r in records if r.outcome is Outcome.SUCCEEDED and r.start is not None]
    if not ran:
        return False
    history = load_history(store) or History()
    history.record(ran)
    store.create(f"{PREFIX}{stamp()}-{uuid.uuid4().hex[:8]}", history.to_json().encode())
    _trim(store)
    return True


def _trim(store: Store) -> None:
    from ..stores.file import FileStore

    if isinstance(store, FileStore):
        for key in store.list(PREFIX)[:-KEEP]:
            store.delete(key)
