"""The GitHub Actions cache store, ``github-cache://``: values that outlive a run (cache v2).

URL forms: ``github-cache://`` (cache keys ``ciflow/<key>~``) or ``github-cache://NS`` with a
namespace ``NS`` of ``[a-z0-9][a-z0-9._-]{0,31}`` (cache keys ``ciflow-NS/<key>~``). Every value
has the version `CACHE_VERSION`, so ``actions/cache`` entries never collide with ciflow's. The
trailing ``~`` (never part of a key) means no cache key of ciflow is a prefix of another, so the
service's prefix matching can only find the exact key; reads check ``matched_key`` besides.
Cache keys may have at most 512 characters.

Same runner variables, token and Twirp JSON calls as the ``github://`` store (the shared
`DownloadingStore`): ``…CacheService/CreateCacheEntry`` -> PUT the raw bytes to the signed URL
(one PUT or blocks) -> ``FinalizeCacheEntryUpload``; reads use ``GetCacheEntryDownloadURL``
with the exact cache key as ``key`` and as the one restore key (other clients report the
service missing exact keys without restore keys; the official toolkit sends none).

**Scopes.** GitHub scopes entries by ref; the runtime token's ``ac`` claim says which: a run
writes to its own ref and reads its own ref first, then (read-only) a pull request's base branch
and the default branch. So a feature branch reads the default branch's entries but not the
reverse, and create-once holds per ref: a branch may create a key the default branch has, and
its runs then read their own. ciflow needs no branch setting: the token carries it.

**Newest key.** `GitHubCacheStore.newest_key` asks ``GetCacheEntryDownloadURL`` with the prefix
(``ciflow/<prefix>``, no ``~``) as restore key: the most recently *created* match in the first
scope that has one, not the greatest key in sort order (the same as long as keys are created
in the order they sort, e.g. carrying a timestamp).

**Toolkit archives.** `GitHubCacheStore.create_archive` stores a ``pack_outputs`` archive
under `toolkit_version` of the restoring step's ``paths``, so ``@actions/cache``'s
``restoreCache(paths, cache_key(key), restoreKeys)`` (the ``actions/cache`` action) finds it and
extracts it with ``tar -xf … -P -C $GITHUB_WORKSPACE --use-compress-program unzstd``;
`GitHubCacheStore.get_archive_to_file` reads an entry ``saveCache(paths, cache_key(key))``
wrote. A key's raw value and its archives are separate entries (different versions).

Cache entries are immutable: create of an existing key returns False (HTTP 409
``already_exists`` or ``ok: false``, as the service answers). A write the token may not make
(``cache write denied``, e.g. a read-only token or a pull request from a fork) raises
`StoreUnavailable` (a `StoreError`). The service cannot list or delete entries:
`GitHubCacheStore.list`, hence `Store.wait`, and `GitHubCacheStore.delete` raise
`StoreError`; GitHub evicts entries unused for 7 days and beyond the repository's 10 GB.

If the answer to a CreateCacheEntry is lost and the retry finds the key reserved, the lost call
may have reserved it for this client; the service cannot release it, so create returns False.

API calls: create = CreateCacheEntry + upload + FinalizeCacheEntryUpload (1 if the key exists);
get = GetCacheEntryDownloadURL + download (1 if absent); exists and newest_key =
GetCacheEntryDownloadURL.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..base import StoreError, StoreUnavailable, check_key, into_file
from .blobs import CHUNK, Pieces
from .download import DownloadingStore, Sink
from .twirp import TwirpError, get_field

__all__ = [
    "CACHE_SERVICE", "CACHE_VERSION", "TOOLKIT_COMPRESSION", "GitHubCacheStore",
    "toolkit_version",
]  # fmt: skip

CACHE_SERVICE = "github.actions.results.api.v1.CacheService"
#: the version of every ciflow cache value (the toolkit's is `toolkit_version`)
CACHE_VERSION = hashlib.sha256(b"ciflow github-cache store, format 1").hexdigest()
#: the cache service's limit on keys
KEY_MAX = 512
CONTENT_TYPE = "application/octet-stream"
#: the compression @actions/cache (6.x) names in its version wherever ``zstd`` is installed: it
#: extracts with ``unzstd`` (no ``--long``); without zstd it uses "gzip", another version
TOOLKIT_COMPRESSION = "zstd-without-long"
#: ``versionSalt`` of @actions/cache's ``cacheUtils.getCacheVersion``
TOOLKIT_SALT = "1.0"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PREFIX = re.compile(r"[A-Za-z0-9._=@+/-]*")


def _denied(message: str) -> bool:
    return "denied" in message.lower()


def toolkit_version(
    paths: Sequence[str], compression: str = TOOLKIT_COMPRESSION, *, windows_only: bool = False
) -> str:
    """The cache version ``@actions/cache`` computes for ``paths`` (``getCacheVersion``).

    SHA-256 (hex) of ``paths`` exactly as the step passes them (order and spelling count),
    the compression method, ``windows-only`` for a restorer on Windows without
    ``enableCrossOsArchive``, and the salt ``1.0``, joined by ``|``.
    """
    if isinstance(paths, str) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise UsageError(
            f"toolkit cache paths must be a non-empty list of paths, not {paths!r}: pass the "
            "`path:` lines of the actions/cache step that restores the entry"
        )
    parts = [*paths, compression, *(["windows-only"] if windows_only else []), TOOLKIT_SALT]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


class GitHubCacheStore(DownloadingStore):
    """A store in the repository's GitHub Actions cache: create-once values, no listing."""

    scheme = "github-cache"
    service = CACHE_SERVICE

    def _setup(self) -> None:
        self.prefix = f"ciflow-{self.namespace}/" if self.namespace else "ciflow/"

    def cache_key(self, key: str) -> str:
        """The cache key of a store key; `UsageError` if it is too long."""
        check_key(key)
        cache_key = f"{self.prefix}{key}~"
        if len(cache_key) > KEY_MAX:
            raise UsageError(
                f"store key too long for the github-cache store: {key[:60]!r}… gives a "
                f"{len(cache_key)}-character cache key; GitHub allows {KEY_MAX}"
            )
        return cache_key

    def _cache_prefix(self, prefix: str) -> str:
        """The cache-key form of a key prefix (no ``~``); `UsageError` if it cannot be one."""
        cache_prefix = f"{self.prefix}{prefix}"
        if not _PREFIX.fullmatch(prefix) or len(cache_prefix) > KEY_MAX:
            raise UsageError(
                f"invalid key prefix {prefix[:60]!r} for the github-cache store: use characters "
                f"of [A-Za-z0-9._=@+/-], at most {KEY_MAX - len(self.prefix)} of them"
            )
        return cache_prefix

    def _store_key(self, cache_key: str) -> str | None:
        """The store key of one of our cache keys, or None if it is not one."""
        if not (cache_key.startswith(self.prefix) and cache_key.endswith("~")):
            return None
        key = cache_key[len(self.prefix) : -1]
        with contextlib.suppress(UsageError):
            return check_key(key)
        return None

    # -- create ------------------------------------------------------------------------------------

    def _denied_error(self, key: str, message: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"github-cache store: cache write denied for {key!r} ({message}); read-only tokens, "
            "e.g. of pull requests from forks, cannot save cache entries"
        )

    def _create(self, key: str, pieces: Pieces, total: int, version: str = CACHE_VERSION) -> bool:
        cache_key = self.cache_key(key)
        body = {"key": cache_key, "version": version}
        try:
            resp, _ = self.twirp.rpc("CreateCacheEntry", body)
        except TwirpError as exc:
            if exc.exists:
                return False
            if _denied(exc.msg):
                raise self._denied_error(key, exc.msg) from None
            raise
        if get_field(resp, "ok") is False:
            message = str(get_field(resp, "message") or "")
            if _denied(message):
                raise self._denied_error(key, message)
            return False  # "another job may be creating this cache"
        url = get_field(resp, "signed_upload_url")
        if not isinstance(url, str) or not url:
            raise StoreError(f"github-cache store: CreateCacheEntry for {key!r} gave no URL")
        self.blobs.upload(url, pieces, total, CONTENT_TYPE)
        try:
            resp, _ = self.twirp.rpc("FinalizeCacheEntryUpload", {**body, "size_bytes": str(total)})
        except TwirpError as exc:
            if exc.ambiguous and exc.exists:
                return True  # a lost attempt finalized our reservation
            raise
        if get_field(resp, "ok") is False:
            message = str(get_field(resp, "message") or "")
            if _denied(message):
                raise self._denied_error(key, message)
            return False
        return True

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Save ``data`` under ``key`` unless the entry exists. True if written."""
        check_key(key)
        self.stats.add("create")
        view = memoryview(data)
        return self._create(key, lambda: (view,), len(view))

    def _create_file(self, key: str, path: Path, version: str) -> bool:
        """Save the file ``path`` under ``key`` and ``version``, streamed in blocks."""
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc

        def pieces() -> Iterator[bytes]:
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        yield chunk
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

        return self._create(key, pieces, size, version)

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, streaming ``path`` in blocks."""
        check_key(key)
        self.stats.add("create_from_file")
        return self._create_file(key, Path(path), CACHE_VERSION)

    def create_archive(self, key: str, path: Path, paths: Sequence[str]) -> bool:
        """Save the ``.tar.zst`` archive ``path`` under ``key`` for ``@actions/cache``.

        ``path`` is what ``distributed.archive.pack_outputs(workspace, patterns, path)`` wrote
        (members relative to the workspace); ``paths`` are the restoring step's ``path:``
        lines, exactly (the entry's version is `toolkit_version` of them). The toolkit restores
        it with ``restoreCache(paths, cache_key(key))`` or a restore key prefixing that, into
        its ``GITHUB_WORKSPACE``, on a runner with ``zstd`` (Linux, macOS, or Windows with
        ``enableCrossOsArchive``). True if written, False if the entry exists.
        """
        check_key(key)
        self.stats.add("create_archive")
        path = Path(path)
        version = toolkit_version(paths)
        try:
            with open(path, "rb") as fh:
                magic = fh.read(len(_ZSTD_MAGIC))
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        if magic != _ZSTD_MAGIC:
            raise UsageError(
                f"cannot store {path} under {key!r} as a toolkit cache archive: it is not "
                "zstd-compressed; make it with ciflow.distributed.archive.pack_outputs"
            )
        return self._create_file(key, path, version)

    # -- get -----------------------------------------------------------------------------------

    def _lookup(self, key: str, restore: str, version: str) -> tuple[str, str] | None:
        """(download URL, matched cache key) of a lookup, or None if nothing matched."""
        body: dict[str, Any] = {"key": key, "restore_keys": [restore], "version": version}
        try:
            resp, _ = self.twirp.rpc("GetCacheEntryDownloadURL", body)
        except TwirpError as exc:
            if exc.not_found:
                return None
            raise
        url, matched = get_field(resp, "signed_download_url"), get_field(resp, "matched_key")
        if get_field(resp, "ok") is False or not url or not isinstance(matched, str):
            return None
        return str(url), matched

    def _signed_url(self, key: str, version: str = CACHE_VERSION) -> str | None:
        """The download URL of ``key``'s entry, or None if it has none."""
        cache_key = self.cache_key(key)
        found = self._lookup(cache_key, cache_key, version)
        if found is None or found[1] != cache_key:
            return None  # a prefix match of another key, not ours
        return found[0]

    def exists(self, key: str) -> bool:
        """Whether ``key`` has an entry (one GetCacheEntryDownloadURL, no download)."""
        self.stats.add("exists")
        return self._signed_url(key) is not None

    def newest_key(self, prefix: str) -> str | None:
        """The key starting with ``prefix`` whose entry was created last, or None.

        One GetCacheEntryDownloadURL, no listing: the service's newest match in the first
        scope (this run's ref, then the base and default branches) that has one.
        """
        self.stats.add("newest_key")
        cache_prefix = self._cache_prefix(prefix)
        found = self._lookup(cache_prefix, cache_prefix, CACHE_VERSION)
        key = None if found is None else self._store_key(found[1])
        return key if key is not None and key.startswith(prefix) else None

    def _fetch(self, key: str, sink: Sink, version: str) -> bool:
        url = self._signed_url(key, version)
        if url is None:
            return False

        def consume(chunks: Iterator[bytes]) -> bool:
            write = sink()
            for chunk in chunks:
                write(chunk)
            return True

        return bool(self.blobs.download(url, consume))

    def _download(self, key: str, sink: Sink) -> bool:
        return self._fetch(key, sink, CACHE_VERSION)

    def get_archive_to_file(self, key: str, path: Path, paths: Sequence[str]) -> bool:
        """Stream the toolkit archive of ``key`` for ``paths`` into ``path``; False if absent.

        The entry `create_archive` or ``saveCache(paths, cache_key(key))`` wrote (its version
        `toolkit_version` of ``paths``); ``path`` is replaced only when complete. The archive
        unpacks with ``distributed.restore.unpack_outputs``.
        """
        check_key(key)
        self.stats.add("get_archive_to_file")
        version = toolkit_version(paths)
        return into_file(Path(path), lambda sink: self._fetch(key, sink, version))

    # -- what the cache service cannot do ---------------------------------------------------------

    def list(self, prefix: str) -> builtins.list[str]:
        """Not possible: raises `StoreError`."""
        self.stats.add("list")
        raise StoreError(
            "github-cache store cannot list keys: the GitHub cache service has no listing for "
            "runner tokens; keep keys you must list in a github:// store (newest_key works)"
        )

    def delete(self, key: str) -> None:
        """Not possible: raises `StoreError` (entries are immutable; GitHub evicts them)."""
        check_key(key)
        self.stats.add("delete")
        raise StoreError(
            f"github-cache store cannot delete {key!r}: cache entries are immutable and the "
            "cache service offers no delete; GitHub evicts entries unused for 7 days"
        )
