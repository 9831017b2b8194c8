"""An in-memory store, ``memory://NAME``, for tests and single-process runs.

All stores opened in one process with the same ``NAME`` share one dict of values (a *space*),
so a test can open a store twice and see two clients of one store; another ``NAME`` is another
store. Nothing outlives the process. It keeps the whole protocol (see `ciflow.stores.base`):
create-if-absent is atomic across threads, a key cannot also be a folder of other keys (as in the
file store), its `Store.wait` wakes at once when a key appears (its profile ``pushes``), and
``stats`` counts each operation like the file store does (a `wait` counts one ``list`` per look).
"""

from __future__ import annotations

import builtins
import os
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..stores.base import Store, StoreError, check_key

__all__ = ["MemoryStore"]

#: bytes written at a time by `MemoryStore.get_to_file`
CHUNK = 1 << 20

_NAME = re.compile(r"[A-Za-z0-9._-]*")


@dataclass
class _Space:
    """The values of one ``memory://NAME``, and the condition that guards them."""

    values: dict[str, bytes] = field(default_factory=dict)
    #: how many keys lie below each folder (``a/b`` for key ``a/b/c``)
    folders: Counter[str] = field(default_factory=Counter)
    changed: threading.Condition = field(default_factory=threading.Condition)


_SPACES: dict[str, _Space] = {}
_SPACES_LOCK = threading.Lock()


def _folders(key: str) -> list[str]:
    """The folders above ``key``: ``a`` and ``a/b`` for ``a/b/c``."""
    parts = key.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


class MemoryStore(Store):
    """A store in this process's memory, shared by every store opened with the same URL."""

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        scheme, sep, name = url.partition("://")
        name = name.rstrip("/")
        if scheme != "memory" or not sep or not _NAME.fullmatch(name):
            raise UsageError(f"invalid store URL {url!r}: use memory://NAME with [A-Za-z0-9._-]")
        self.name = name
        with _SPACES_LOCK:
            self._space = _SPACES.setdefault(name, _Space())

    # -- the protocol ------------------------------------------------------------------------

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Keep ``data`` under ``key`` if absent (atomic). True if written."""
        check_key(key)
        self.stats.add("create")
        return self._put(key, bytes(data))

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, reading ``path`` once (no copy beyond the kept value)."""
        check_key(key)
        self.stats.add("create_from_file")
        if key in self._space.values:  # cheap early answer; `_put` decides for real
            return False
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        return self._put(key, data)

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")
        with self._space.changed:
            return self._space.values.get(key)

    def get_to_file(self, key: str, path: Path) -> bool:
        """Write the value of ``key`` into ``path`` in chunks (replaced when complete)."""
        check_key(key)
        self.stats.add("get_to_file")
        with self._space.changed:
            data = self._space.values.get(key)
        if data is None:
            return False
        path = Path(path)
        tmp = path.with_name(f".{path.name[:120]}.part~{secrets.token_hex(8)}")
        view = memoryview(data)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as fh:
                for start in range(0, len(view), CHUNK):
                    fh.write(view[start : start + CHUNK])
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        finally:
            if tmp.exists():
                os.unlink(tmp)
        return True

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value."""
        check_key(key)
        self.stats.add("exists")
        with self._space.changed:
            return key in self._space.values

    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys starting with ``prefix``."""
        self.stats.add("list")
        with self._space.changed:
            return self._keys(prefix)

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (absent is fine)."""
        check_key(key)
        self.stats.add("delete")
        space = self._space
        with space.changed:
            if space.values.pop(key, None) is None:
                return
            space.folders.subtract(_folders(key))
            space.folders += Counter()  # drop the folders left empty

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """`Store.wait`: wakes at once when a key is created (``poll`` is not needed)."""
        known = set(known)
        with self._space.changed:
            while True:
                self.stats.add("list")
                keys = self._keys(prefix)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or any(k not in known for k in keys):
                    return keys
                self._space.changed.wait(remaining)

    # -- helpers -----------------------------------------------------------------------------

    def clear(self) -> None:
        """Remove every key of this store's ``NAME`` (for all its clients)."""
        with self._space.changed:
            self._space.values.clear()
            self._space.folders.clear()

    def _keys(self, prefix: str) -> builtins.list[str]:
        return sorted(k for k in self._space.values if k.startswith(prefix))

    def _put(self, key: str, data: bytes) -> bool:
        """Add ``key`` unless it exists; `StoreError` if it would be a folder and a key."""
        space = self._space
        folders = _folders(key)
        with space.changed:
            if key in space.values:
                return False
            if space.folders[key]:
                raise StoreError(
                    f"cannot store key {key!r}: it is already a folder of other keys "
                    f"(e.g. {key}/...), and a key cannot be both; rename one of them"
                )
            for folder in folders:
                if folder in space.values:
                    raise StoreError(
                        f"cannot store key {key!r}: {folder!r} is a value, and a key cannot "
                        "also be a folder of other keys; rename one of them"
                    )
            space.values[key] = data
            space.folders.update(folders)
            space.changed.notify_all()
            return True
