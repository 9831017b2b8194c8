"""What a ``github://`` create needs besides the service: per-name locks, held-name waits and
the test failpoint that leaves an artifact unfinalized (docs/architecture.md, "The github
store and GitHub's artifact service")."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from typing import TYPE_CHECKING

from ..base import StoreError
from .twirp import TwirpError

if TYPE_CHECKING:
    from .artifacts import GitHubArtifactStore

__all__ = ["Again", "Held", "exclusive", "failpoint", "name_lock", "probe"]


class Again(Enum):
    """What a create attempt asks for next, besides True or False."""

    SAME = "the same name again"  # our orphan removed, or our late artifact given up
    HELD = "held"  # a 409 without a value: a writer uploading, or one that died


class Held:
    """How long a name has been held without a value: pauses of 0.2 s doubling to 5 s, the
    last one ending at ``limit``."""

    def __init__(self, limit: float) -> None:
        self.first, self.limit, self.slept, self.next = time.monotonic(), limit, 0.0, 0.2

    def waited(self) -> float:
        return max(time.monotonic() - self.first, self.slept)

    def over(self) -> bool:
        return self.waited() >= self.limit

    def pause(self) -> float:
        pause = max(0.01, min(self.next, self.limit - self.waited()))
        self.next = min(2 * self.next, 5.0)
        self.slept += pause
        return pause


_NAME_LOCKS: dict[tuple[str, ...], tuple[threading.Lock, int]] = {}
_NAME_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def name_lock(*ident: str) -> Iterator[None]:
    """Serialise creates of one name by one job within this process (so "ours" is unique)."""
    with _NAME_LOCKS_GUARD:
        lock, users = _NAME_LOCKS.get(ident, (threading.Lock(), 0))
        _NAME_LOCKS[ident] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _NAME_LOCKS_GUARD:
            lock, users = _NAME_LOCKS[ident]
            if users == 1:
                del _NAME_LOCKS[ident]
            else:
                _NAME_LOCKS[ident] = (lock, users - 1)


def failpoint(key: str) -> None:
    """Tests: ``CIFLOW_FAILPOINT=before-finalize:<key end>`` SIGKILLs this process after the
    upload of a matching key, leaving its artifact unfinalized (a writer that died)."""
    point = os.environ.get("CIFLOW_FAILPOINT", "")
    if point.startswith("before-finalize:") and key.endswith(point.partition(":")[2]):
        os.kill(os.getpid(), signal.SIGKILL)


_EXCLUSIVE: dict[tuple[str, ...], bool] = {}
_PROBES: dict[tuple[str, ...], int] = {}
_PROBE_LOCK = threading.Lock()
#: probes without a clear answer before a service is taken to keep duplicates of a name
PROBES = 3


def exclusive(ident: tuple[str, ...], probe: Callable[[], bool | None]) -> bool:
    """Whether the service holds a name from CreateArtifact on, so that a finalized artifact
    is the only one of its name: ``probe`` finds out (None: it could not), once per ``ident``
    (the service and run) in this process; after `PROBES` unclear answers, not."""
    with _PROBE_LOCK:
        if ident not in _EXCLUSIVE:
            found = probe()
            _PROBES[ident] = _PROBES.get(ident, 0) + 1
            if found is None and _PROBES[ident] < PROBES:
                return False
            _EXCLUSIVE[ident] = bool(found)
        return _EXCLUSIVE[ident]


def probe(store: GitHubArtifactStore) -> bool | None:
    """CreateArtifact of the run's probe name (``~~probe`` parses as no key) until it answers
    409 that no finalized artifact explains: names are held from creation on (True). Two
    creates that both succeed say they are not (False; both are deleted). None: no clear
    answer. The probe is never finalized; one that holds its name is kept, so that the other
    jobs of the run get their answer from one call, without a creation."""
    name, made = f"{store.prefix}~probe", 0
    try:
        for _ in range(2):
            store.budget.spend(name)
            try:
                store.twirp.rpc("CreateArtifact", store._body(name))
            except TwirpError as exc:
                if not exc.ambiguous:
                    store.budget.refund()
                if exc.exists and not exc.ambiguous:
                    made = 0  # ours (if any) holds the name: keep it for the others
                    return None if any(e.value for e in store._lookup(name)) else True
                return None
            made += 1
        return False
    except StoreError:
        return None
    finally:
        for _ in range(made):
            store._release(name)
