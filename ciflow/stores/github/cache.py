"""The GitHub Actions cache store, ``github-cache://``: values that outlive a run (cache v2).

URL forms: ``github-cache://`` (cache keys ``ciflow/<key>~``) or ``github-cache://NS`` with a
namespace ``NS`` of ``[a-z0-9][a-z0-9._-]{0,31}`` (cache keys ``ciflow-NS/<key>~``). Every entry
has the version `CACHE_VERSION`, so ``actions/cache`` entries never collide with ciflow's. The
trailing ``~`` (never part of a key) means no cache key of ciflow is a prefix of another, so the
service's prefix matching can only find the exact key; `GitHubCacheStore.get` checks
``matched_key`` besides. Cache keys may have at most 512 characters.

Same runner variables, token and Twirp JSON calls as the ``github://`` store (the shared
`DownloadingStore`): ``…CacheService/CreateCacheEntry`` -> PUT the raw bytes to the signed URL
(one PUT or blocks) -> ``FinalizeCacheEntryUpload``; reads use ``GetCacheEntryDownloadURL``.
Values are stored as raw bytes, not archived.

Cache entries are immutable: create of an existing key returns False (HTTP 409
``already_exists`` or ``ok: false``, as the service answers). A write the token may not make
(``cache write denied``, e.g. a read-only token or a pull request from a fork) raises
`StoreUnavailable` (a `StoreError`). The service cannot list or delete entries:
`GitHubCacheStore.list`, hence `Store.wait`, and `GitHubCacheStore.delete` raise
`StoreError`; GitHub evicts entries unused for 7 days and beyond the repository's 10 GB. Entries
are scoped by branch: a pull request reads its base branch's entries and writes its own.

If the answer to a CreateCacheEntry is lost and the retry finds the key reserved, the lost call
may have reserved it for this client; the service cannot release it, so create returns False.

API calls: create = CreateCacheEntry + upload + FinalizeCacheEntryUpload (1 if the key exists);
get = GetCacheEntryDownloadURL + download (1 if absent); exists = GetCacheEntryDownloadURL.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..base import StoreError, StoreUnavailable, check_key
from .blobs import CHUNK, Pieces
from .download import DownloadingStore, Sink
from .twirp import TwirpError, get_field

__all__ = ["CACHE_SERVICE", "CACHE_VERSION", "GitHubCacheStore"]

CACHE_SERVICE = "github.actions.results.api.v1.CacheService"
#: the version of every ciflow cache entry (the toolkit uses a sha256 of paths and compression)
CACHE_VERSION = hashlib.sha256(b"ciflow github-cache store, format 1").hexdigest()
#: the cache service's limit on keys
KEY_MAX = 512
CONTENT_TYPE = "application/octet-stream"


def _denied(message: str) -> bool:
    return "denied" in message.lower()


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

    # -- create ------------------------------------------------------------------------------------

    def _denied_error(self, key: str, message: str) -> StoreUnavailable:
        return StoreUnavailable(
            f"github-cache store: cache write denied for {key!r} ({message}); read-only tokens, "
            "e.g. of pull requests from forks, cannot save cache entries"
        )

    def _create(self, key: str, pieces: Pieces, total: int) -> bool:
        cache_key = self.cache_key(key)
        body = {"key": cache_key, "version": CACHE_VERSION}
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

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, streaming ``path`` in blocks."""
        check_key(key)
        self.stats.add("create_from_file")
        path = Path(path)
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

        return self._create(key, pieces, size)

    # -- get -----------------------------------------------------------------------------------

    def _signed_url(self, key: str) -> str | None:
        """The download URL of ``key``'s entry, or None if it has none."""
        cache_key = self.cache_key(key)
        body: dict[str, Any] = {"key": cache_key, "version": CACHE_VERSION}
        try:
            resp, _ = self.twirp.rpc("GetCacheEntryDownloadURL", body)
        except TwirpError as exc:
            if exc.not_found:
                return None
            raise
        url = get_field(resp, "signed_download_url")
        if get_field(resp, "ok") is False or not url:
            return None
        if get_field(resp, "matched_key") != cache_key:
            return None  # a prefix match of another key, not ours
        return str(url)

    def exists(self, key: str) -> bool:
        """Whether ``key`` has an entry (one GetCacheEntryDownloadURL, no download)."""
        self.stats.add("exists")
        return self._signed_url(key) is not None

    def _download(self, key: str, sink: Sink) -> bool:
        url = self._signed_url(key)
        if url is None:
            return False

        def consume(chunks: Iterator[bytes]) -> bool:
            write = sink()
            for chunk in chunks:
                write(chunk)
            return True

        return bool(self.blobs.download(url, consume))

    # -- what the cache service cannot do ---------------------------------------------------------

    def list(self, prefix: str) -> builtins.list[str]:
        """Not possible: raises `StoreError`."""
        self.stats.add("list")
        raise StoreError(
            "github-cache store cannot list keys: the GitHub cache service has no listing for "
            "runner tokens; keep keys you must list in a github:// store"
        )

    def delete(self, key: str) -> None:
        """Not possible: raises `StoreError` (entries are immutable; GitHub evicts them)."""
        check_key(key)
        self.stats.add("delete")
        raise StoreError(
            f"github-cache store cannot delete {key!r}: cache entries are immutable and the "
            "cache service offers no delete; GitHub evicts entries unused for 7 days"
        )
