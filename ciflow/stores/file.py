"""The folder store, ``file://PATH``: a local or shared (network) folder, one file per key.

Key ``a/b/c`` is the file ``<root>/a/b/c``. A value is written to a hidden temporary file in the
target folder, flushed and fsynced, then published under its final name in one step, so a reader
sees either no file or the whole value:

- ``os.link(tmp, final)`` publishes only if ``final`` is absent (atomic on local disks, NFS and
  SMB); ``FileExistsError`` means another writer won.
- where hard links are not supported, a per-key `filelock.FileLock` guards an exists-check and
  ``os.replace``. The choice depends on the file system only, so every client of one folder takes
  the same path.

Temporary and lock files carry a ``~``, which no key may contain, so they never clash with keys
and `FileStore.list` skips them. A symbolic link planted at a key is not a value: `FileStore.list`
and `FileStore.exists` do not see it, `FileStore.get` refuses it, and `FileStore.create` removes
it (under the key's lock, never following it) and publishes the real value in its place.
A key cannot also be a folder of other keys (``a/b`` and ``a/b/c``); trying raises `StoreError`.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import filelock

from ..errors import UsageError
from .base import Store, StoreError, StoreUnavailable, check_key

__all__ = ["FileStore"]

#: bytes copied at a time by the streaming operations
CHUNK = 1 << 20
#: how long a writer waits for a per-key lock (lock fallback only) before giving up
LOCK_TIMEOUT = 60.0
#: folder under the root holding the per-key lock files (not a valid key: it contains ``~``)
LOCK_DIR = ".ciflow~locks"

_PART = re.compile(r"[A-Za-z0-9._=@+-]+")
_DRIVE = re.compile(r"^/[A-Za-z]:")
#: errors of ``os.link`` that mean "this file system has no hard links": use the lock instead
_NO_LINKS = frozenset(
    code
    for code in (
        errno.EPERM,
        errno.EINVAL,
        errno.ENOSYS,
        errno.EMLINK,
        getattr(errno, "ENOTSUP", None),
        getattr(errno, "EOPNOTSUPP", None),
    )
    if code is not None
)
#: errors of ``fsync`` that only mean "not supported here" (some FUSE and network file systems)
_NO_FSYNC = frozenset({errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EINVAL)})
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)


def root_from_url(url: str) -> Path:
    """The folder of a ``file://PATH`` URL (or plain path); relative paths resolve against cwd."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        rest = url
    elif scheme != "file":
        raise UsageError(f"not a file store URL: {url!r}; use file:///absolute/path")
    elif rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    if os.name == "nt" and _DRIVE.match(rest):
        rest = rest[1:]
    if not rest:
        raise UsageError(f"file store URL {url!r} names no folder; use file:///absolute/path")
    return Path(rest).expanduser().resolve()


class FileStore(Store):
    """A store in a folder, safe for many processes and for machines sharing a network folder."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.root = root_from_url(url)
        self._links = True  # False once the file system refused a hard link
        self._real_root = os.path.realpath(self.root)
        # folder -> (its names, its keys, its sub-folders) as last listed
        self._folders: dict[str, tuple[frozenset[str], builtins.list[str], builtins.list[str]]] = {}

    # -- the protocol ------------------------------------------------------------------------

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Write ``data`` under ``key`` if absent (atomic across processes). True if written."""
        check_key(key)
        self.stats.add("create")
        view = memoryview(data)

        def write(fh: BinaryIO) -> None:
            fh.write(view)

        return self._create(key, write)

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, copying ``path`` in chunks so a large blob never sits in memory."""
        check_key(key)
        self.stats.add("create_from_file")
        path = Path(path)
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {_why(exc)}") from exc
        with src:

            def copy(fh: BinaryIO) -> None:
                while True:
                    try:
                        chunk = src.read(CHUNK)
                    except OSError as exc:
                        raise StoreError(f"cannot read {path}: {_why(exc)}") from exc
                    if not chunk:
                        return
                    fh.write(chunk)

            return self._create(key, copy)

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")
        src = self._open(key)
        if src is None:
            return None
        with src:
            try:
                return src.read()
            except OSError as exc:
                raise self._unavailable(exc, writing=False) from exc

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` (replaced at once when complete)."""
        check_key(key)
        self.stats.add("get_to_file")
        src = self._open(key)
        if src is None:
            return False
        path = Path(path)
        tmp = path.with_name(f".{path.name[:120]}.part~{secrets.token_hex(8)}")
        with src:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                dst = open(tmp, "xb")
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {_why(exc)}") from exc
            try:
                with dst:
                    while True:
                        try:
                            chunk = src.read(CHUNK)
                        except OSError as exc:
                            raise self._unavailable(exc, writing=False) from exc
                        if not chunk:
                            break
                        try:
                            dst.write(chunk)
                        except OSError as exc:
                            raise StoreError(f"cannot write {path}: {_why(exc)}") from exc
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise StoreError(f"cannot write {path}: {_why(exc)}") from exc
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        return True

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value: one stat of its file (a planted link is not a value)."""
        check_key(key)
        self.stats.add("exists")
        try:
            mode = os.lstat(self._path(key)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._unavailable(exc, writing=False) from exc
        return stat.S_ISREG(mode)

    def list(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix`` (may end mid-name); [] if the root is absent."""
        self.stats.add("list")
        head, slash, tail = prefix.rpartition("/")
        if slash and not head:
            return []  # "/..." : keys are relative
        if head:
            try:
                check_key(head)
            except UsageError:
                return []  # no key starts with an invalid path
        if tail and not _PART.fullmatch(tail):
            return []
        start = self.root.joinpath(*head.split("/")) if head else self.root
        base = f"{head}/" if head else ""
        keys: builtins.list[str] = []
        try:
            self._walk(str(start), base, tail, keys)
        except OSError as exc:
            raise self._unavailable(exc, writing=False) from exc
        keys.sort()
        return keys

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (absent is fine)."""
        check_key(key)
        self.stats.add("delete")
        final = self._path(key)
        try:
            os.unlink(final)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            if os.path.isdir(final):
                return  # a folder of other keys, not a value
            raise self._unavailable(exc, writing=True) from exc

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _create(self, key: str, write: Callable[[BinaryIO], None]) -> bool:
        """Write a temp file with ``write``, fsync it and publish it under ``key`` if absent."""
        final = self._path(key)
        if os.path.lexists(final) and not os.path.islink(final):  # cheap early answer only
            if os.path.isdir(final):
                raise self._key_is_folder(key)
            return False
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._blocked(key, exc) from exc
        except OSError as exc:
            raise self._unavailable(exc, writing=True) from exc
        if not self._beneath(final.parent):
            raise self._planted(key, final.parent)
        tmp = final.with_name(f".{final.name[:120]}.tmp~{secrets.token_hex(8)}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                    fh.flush()
                    _fsync(fh.fileno())
            except OSError as exc:  # name the folder, not the temp file
                raise self._unavailable(exc, writing=True, path=final.parent) from exc
            return self._publish(key, tmp, final)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _publish(self, key: str, tmp: Path, final: Path) -> bool:
        """Give the complete ``tmp`` the name ``final`` unless it exists. True if published."""
        if self._links:
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                if _same_file(tmp, final):
                    return True  # NFS: the link was made but its reply was lost and retried
                if os.path.isdir(final):
                    raise self._key_is_folder(key) from None
                if not os.path.islink(final):
                    return False
                # a link planted at the key is no value: replaced under the key's lock below
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise self._unavailable(exc, writing=True, path=final.parent) from exc
                self._links = False
        lock_path = self.root / LOCK_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.lock"
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(lock_path, timeout=LOCK_TIMEOUT):
                return self._publish_locked(key, tmp, final)
        except filelock.Timeout as exc:
            raise StoreUnavailable(
                f"store folder {self.root}: lock {lock_path} was held for over {LOCK_TIMEOUT:.0f}s;"
                " check for a hung ciflow process or pick another --store"
            ) from exc
        except OSError as exc:
            raise self._unavailable(exc, writing=True, path=final.parent) from exc

    def _publish_locked(self, key: str, tmp: Path, final: Path) -> bool:
        """`_publish` while holding the key's lock: remove a planted link, then publish.

        Only lock holders remove links, so the link removed is the one seen; a writer that
        publishes with ``os.link`` in between wins, and this one then finds its value.
        """
        if os.path.islink(final):
            os.unlink(final)  # never followed: the link itself goes, not what it points at
        if self._links:
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                if os.path.isdir(final):
                    raise self._key_is_folder(key) from None
                return _same_file(tmp, final)
        if os.path.lexists(final):
            if os.path.isdir(final):
                raise self._key_is_folder(key)
            return False
        os.replace(tmp, final)
        return True

    def _open(self, key: str) -> BinaryIO | None:
        """The value file of ``key`` opened for reading, or None if the key is absent.

        A link planted in the store (the value or a folder on its way) is refused, never
        followed.
        """
        final = self._path(key)
        try:
            fd = os.open(final, os.O_RDONLY | _O_BINARY | _O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._planted(key, final) from None
            if os.path.isdir(final):  # Windows answers "permission denied" for folders
                return None
            raise self._unavailable(exc, writing=False) from exc
        if stat.S_ISDIR(os.fstat(fd).st_mode):  # a folder of other keys, not a value
            os.close(fd)
            return None
        src = os.fdopen(fd, "rb")
        if not self._beneath(final.parent):
            src.close()
            raise self._planted(key, final.parent)
        return src

    def _beneath(self, folder: Path) -> bool:
        """Is ``folder`` (no link on the way) inside the store's folder?"""
        real = os.path.realpath(folder)
        return real == self._real_root or real.startswith(self._real_root + os.sep)

    def _planted(self, key: str, where: Path) -> StoreError:
        return StoreError(
            f"{where} in the store is a symbolic link (key {key!r}); the store never follows "
            "links planted in its folder: delete the link"
        )

    def _walk(self, folder: str, base: str, start: str, out: builtins.list[str]) -> None:
        """Add to ``out`` the keys in ``folder`` (named ``base``) whose first part starts so.

        Links are never followed (a link planted in the store is not a key). What a folder
        held is remembered: when its names are the same as last time, its keys are reused
        without looking at each entry again (a poll of 1,000 results costs about 0.2 ms).
        """
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        now = frozenset(names)
        seen = self._folders.get(folder)
        if seen is None or seen[0] != now:
            seen = self._folders[folder] = (now, *self._entries(folder, base, names))
        _, files, folders = seen
        if start:
            out.extend(k for k in files if k.startswith(start, len(base)))
        else:
            out.extend(files)
        for name in folders:
            if name.startswith(start):
                self._walk(os.path.join(folder, name), f"{base}{name}/", "", out)

    @staticmethod
    def _entries(
        folder: str, base: str, names: builtins.list[str]
    ) -> tuple[builtins.list[str], builtins.list[str]]:
        """The keys (files) and sub-folders among ``names``; temp files and links left out."""
        files: builtins.list[str] = []
        folders: builtins.list[str] = []
        for name in sorted(names):
            if not _PART.fullmatch(name) or name in (".", ".."):
                continue  # temp files and the lock folder contain "~"
            try:
                mode = os.lstat(os.path.join(folder, name)).st_mode
            except FileNotFoundError:
                continue  # deleted while listing
            if stat.S_ISREG(mode):
                files.append(base + name)
            elif stat.S_ISDIR(mode):
                folders.append(name)
        return files, folders

    def _unavailable(
        self, exc: OSError, *, writing: bool, path: Path | None = None
    ) -> StoreUnavailable:
        """One line naming the folder (and ``path`` or the failing file), the cause and the fix."""
        root = self.root
        failed = path or (Path(exc.filename) if isinstance(exc.filename, str) else None)
        where = f" ({failed})" if failed and failed != root else ""
        code = exc.errno
        cause = exc.strerror or str(exc)
        if code in (errno.EACCES, errno.EPERM):
            what = "writable" if writing else "readable"
            msg = (
                f"store folder {root} is not {what}{where}: {cause}; "
                "pick another --store or fix its permissions"
            )
        elif code == errno.EROFS:
            msg = f"store folder {root} is on a read-only file system: pick another --store"
        elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            msg = (
                f"store folder {root} is full{where}: {cause}; "
                "free some space or pick another --store"
            )
        elif code in (errno.ENOTDIR, errno.EEXIST):
            msg = f"store folder {root} is not a folder{where}: {cause}; pick another --store"
        else:
            msg = f"store folder {root} failed{where}: {cause}; check it or pick another --store"
        return StoreUnavailable(msg)

    def _blocked(self, key: str, exc: OSError) -> StoreError:
        """A file stands where a folder is needed: in the store (key clash) or above its root."""
        blocker = _first_non_folder(self._path(key).parent)
        if blocker is None:
            return self._unavailable(exc, writing=True)
        if blocker != self.root and self.root in blocker.parents:
            other = blocker.relative_to(self.root).as_posix()
            return StoreError(
                f"cannot store key {key!r}: {other!r} is a value, and a key cannot also be a "
                "folder of other keys; rename one of them"
            )
        return StoreUnavailable(
            f"store folder {self.root} cannot be created: {blocker} is a file, not a folder; "
            "pick another --store"
        )

    def _key_is_folder(self, key: str) -> StoreError:
        return StoreError(
            f"cannot store key {key!r}: it is already a folder of other keys (e.g. {key}/...), "
            "and a key cannot be both; rename one of them"
        )


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FSYNC:
            raise


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.stat(a), os.stat(b))
    except OSError:
        return False


def _first_non_folder(path: Path) -> Path | None:
    """The nearest existing ancestor-or-self of ``path`` if it is not a folder, else None."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if os.path.isdir(p) else p
    return None
