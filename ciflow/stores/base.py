"""The store protocol: create-if-absent, get, exists, list by prefix, delete, streaming, wait.

``create(key, data)`` is the single atomic primitive: it writes only if the key is absent and
returns False otherwise. Registrations, claims, first-result-wins and leases are all built on it,
so every backend must make it atomic across processes and machines.

Keys are ``/``-separated paths of safe characters (letters, digits, ``._-=@+``), e.g.
``runs/<run-id>/claims/<module>/1``. Backends with naming rules encode them reversibly. A key
is never also the folder of other keys (``a/b`` and ``a/b/c`` cannot both exist): the file store
maps keys to paths, and raises `StoreError` on such a clash.

A backend implements `Store.create`, `Store.get`, `Store.list` and `Store.delete`; it may
override the rest where it can do better: `Store.exists` (default ``key in list(key)``; the file
store stats one file, ``github://`` answers from a listing at most `Store.poll` old),
`Store.newest_key` (default ``max(list(prefix))``; ``github-cache://``, which cannot list, asks
the service), `Store.create_from_file` and `Store.get_to_file` (stream large values),
``Store._wait`` (how `Store.wait` waits: wake at once on a new key where the backend can push,
as its profile's ``pushes`` says) and `Store.close`. The scheme registry, which maps URLs to
backends and their `StoreProfile`, is `ciflow.stores.registry`.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import CiflowError, ExitCode, UsageError

if TYPE_CHECKING:
    from .registry import StoreProfile

__all__ = [
    "FIRST_POLL",
    "Store",
    "StoreDenied",
    "StoreError",
    "StoreFlaky",
    "StoreStats",
    "StoreUnavailable",
    "check_key",
]

#: the first pause of the default `Store.wait` (it doubles up to the poll interval)
FIRST_POLL = 0.005

_KEY = re.compile(r"[A-Za-z0-9._=@+-]+(/[A-Za-z0-9._=@+-]+)*")


class StoreError(CiflowError):
    """The store failed or holds something unreadable; the message names the key and cause."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written (permissions, missing folder, network)."""


class StoreDenied(StoreUnavailable):
    """The store refused our credentials (a wrong password or token): exit 2, never retried."""

    exit_code = ExitCode.USAGE


class StoreFlaky(StoreUnavailable):
    """Every retry of one call failed transiently (5xx, dropped connections): a later try may
    work, unlike a refusal (permissions, a full or read-only disk, a bad token)."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise `UsageError`."""
    if not _KEY.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise UsageError(f"invalid store key {key!r}: use '/'-separated names of [A-Za-z0-9._=@+-]")
    return key


@dataclass
class StoreStats:
    """Operation counts of one store client (reported in summaries and benchmarks)."""

    counts: dict[str, int] = field(default_factory=dict)
    #: seconds (merged across threads) this client spent in failed attempts and the pauses
    #: after them: time it could not rely on the store (observers forgive it, see `Liveness`)
    troubled: float = 0.0
    _trouble_end: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: str, n: int = 1) -> None:
        with self._lock:
            self.counts[op] = self.counts.get(op, 0) + n

    def trouble(self, began: float, ended: float) -> None:
        """Note that calls failed from monotonic ``began`` to ``ended`` (overlaps count once)."""
        with self._lock:
            start = max(began, self._trouble_end)
            if ended > start:
                self.troubled += ended - start
            self._trouble_end = max(self._trouble_end, ended)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Store(ABC):
    """One small protocol; a backend implements the abstract methods (and may override more)."""

    #: the URL this store was opened with
    url: str
    #: what this kind of store costs and offers (set from the scheme registry)
    profile: StoreProfile

    def __init__(self, url: str) -> None:
        from .registry import profile_for

        self.url = url
        self.profile = profile_for(url)
        #: the poll interval in use: the profile's, or what `open_store` was given
        self.poll = self.profile.poll
        self.stats = StoreStats()

    @abstractmethod
    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Write ``data`` under ``key`` only if the key is absent (atomic). True if written.

        ``sole`` promises that no other process ever creates ``key`` (it names its writer, as a
        worker's registration or heartbeat does): backends that settle races by reading back
        (github://) skip that read then.
        """

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The data under ``key``, or None if absent."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """All keys starting with ``prefix`` (a key prefix, not necessarily a folder), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present (absent is fine)."""

    def newest_key(self, prefix: str) -> str | None:
        """The greatest key (in sort order) starting with ``prefix``, or None if there is none.

        Keys that carry a sortable timestamp after the prefix (``parts/<stamp>-<id>``) make
        this "the newest". The default is ``max(list(prefix))``; a backend that cannot list
        overrides it (``github-cache://`` asks the service for its most recently created
        match, which is the same key as long as keys are created in timestamp order).
        """
        return max(self.list(prefix), default=None)

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value; backends override this with something cheaper.

        As fresh as the backend's `list` (``github://`` answers from a listing at most `poll`
        old): a key another client just created or deleted may not show yet.
        """
        check_key(key)
        return key in self.list(key)

    def creations_left(self) -> int | None:
        """How many more keys this client may create, or None for no limit.

        ``github://`` answers GitHub's budget of artifacts per job (500, deleted ones count
        too) minus what this process created; callers thin optional records near the end.
        """
        return None

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, from a file; backends override this to stream large blobs."""
        return self.create(key, path.read_bytes(), sole=sole)

    def get_to_file(self, key: str, path: Path) -> bool:
        """Like `get`, into a file; False if absent. Backends override this to stream."""
        data = self.get(key)
        if data is None:
            return False
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(data)
        shutil.move(str(tmp), path)
        return True

    def wait(
        self,
        prefix: str,
        known: Collection[str] = (),
        timeout: float = 1.0,
        poll: float | None = None,
    ) -> builtins.list[str]:
        """Block until ``list(prefix)`` has a key not in ``known`` or ``timeout`` passes.

        Returns the current key list either way. ``poll`` (default `poll`) bounds the pause
        between two looks; a backend changes how it waits by overriding `_wait`.
        """
        interval = self.poll if poll is None else poll
        return self._wait(prefix, known, time.monotonic() + timeout, interval)

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """`wait` until the monotonic ``deadline``: polls `list` with capped exponential backoff.

        The pauses grow from 5 ms up to ``poll``; backends that can push (Redis, HTTP
        long-poll, memory://) override this to wake at once.
        """
        cap = poll
        delay = min(FIRST_POLL, cap)
        while True:
            keys = self.list(prefix)
            if any(k not in known for k in keys):
                return keys
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return keys
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, cap)

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Release connections; the store is not used afterwards."""
        return None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: what a download writes its bytes with; a backend calls it again to start over (a retry)
Sink = Callable[[], Callable[[bytes], object]]


def into_file(path: Path, fetch: Callable[[Sink], bool]) -> bool:
    """Run ``fetch`` into a temporary file beside ``path``, renamed to it when complete.

    ``fetch`` calls the sink it is given to get a writer (again to restart from nothing) and
    returns False when the value is absent; the temporary file is made only once it writes.
    For backends' `Store.get_to_file`: ``path`` is replaced only by a whole value.
    """
    tmp = path.with_name(f".{path.name[:120]}.part~{secrets.token_hex(8)}")
    handle: builtins.list[BinaryIO] = []

    def sink() -> Callable[[bytes], object]:
        if not handle:  # created only once the value is there
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle.append(open(tmp, "xb"))
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        handle[0].seek(0)
        handle[0].truncate()
        return handle[0].write

    try:
        if not fetch(sink):
            return False
        if not handle:
            sink()  # an empty value: the file exists all the same
        handle[0].close()
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return True
    finally:
        for fh in handle:
            fh.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
