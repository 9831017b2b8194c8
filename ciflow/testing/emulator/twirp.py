"""The emulator's Twirp methods: artifacts (v4) and cache entries (v2)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .model import (
    INVALID_NAME_CHARS,
    SCOPE_READ,
    SCOPE_WRITE,
    TwirpError,
    _Artifact,
    _BlobStore,
    _CacheEntry,
    _Req,
    _rfc3339,
    _Who,
)

_MISS = {"ok": False, "signed_download_url": "", "matched_key": ""}


class TwirpMethods:
    """The Twirp methods of `GitHubEmulator` (a mixin over its state)."""

    # state and helpers of GitHubEmulator
    _lock: threading.Lock
    _artifacts: dict[str, dict[str, _Artifact]]
    _caches: dict[tuple[str, str, str], _CacheEntry]
    _blobs: _BlobStore | None
    _call_log: list[tuple[str, str, str | None]]
    _next_id: Iterator[int]
    _rpcs: dict[tuple[str, str], Callable[[_Who, _Req], dict[str, Any]]]
    artifact_limit: int
    require_restore_keys: bool

    def _identity(self, authorization: str | None) -> _Who:
        raise NotImplementedError

    def _signed_url(self, key: str, perm: str) -> str:
        raise NotImplementedError

    @property
    def _store(self) -> _BlobStore:
        if self._blobs is None:
            raise RuntimeError("the emulator is not started")
        return self._blobs

    # -- artifact service ------------------------------------------------------------------------
    def _ids(self, who: _Who, req: _Req, same_job: bool) -> tuple[str, str]:
        run = req.text("workflow_run_backend_id")
        job = req.text("workflow_job_run_backend_id")
        if run != who[0] or (same_job and job != who[1]):
            raise TwirpError(
                "permission_denied", "the backend ids do not match the ACTIONS_RUNTIME_TOKEN"
            )
        return run, job

    def _create_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name = req.text("name")
        bad = sorted({repr(c) for c in INVALID_NAME_CHARS if c in name})
        if bad:
            raise TwirpError(
                "invalid_argument",
                f"artifact name {name!r} contains invalid characters: {', '.join(bad)}",
            )
        mime = req.opt_text("mime_type") or "application/zip"
        expires, _ = req.stamp("expires_at"), req.integer("version")
        with self._lock:
            run_artifacts = self._artifacts.setdefault(run, {})
            if name in run_artifacts:
                raise TwirpError(
                    "already_exists",
                    "an artifact with this name already exists on the workflow run",
                )
            if sum(a.job == job for a in run_artifacts.values()) >= self.artifact_limit:
                raise TwirpError(
                    "failed_precondition",
                    f"the job has reached the limit of {self.artifact_limit} artifacts",
                )
            art_id = next(self._next_id)
            zipped = mime == "application/zip"
            key = f"actions-results/{art_id}-{secrets.token_hex(8)}" + (".zip" * zipped)
            filename = f"{name}.zip" if zipped and not name.endswith(".zip") else name
            self._store.create(key, mime, filename)
            run_artifacts[name] = _Artifact(art_id, run, job, name, key, time.time(), expires)
        return {"ok": True, "signed_upload_url": self._signed_url(key, "cw")}

    def _find_artifact(self, run: str, job: str | None, name: str, finalized: bool) -> _Artifact:
        art = self._artifacts.get(run, {}).get(name)
        if art is None or (job is not None and art.job != job) or (finalized and not art.finalized):
            raise TwirpError("not_found", f"artifact {name!r} not found")
        return art

    def _finalize_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name, size, digest = req.text("name"), req.integer("size") or 0, req.opt_text("hash")
        with self._lock:
            art = self._find_artifact(run, job, name, finalized=False)
        if art.finalized:  # a retried finalize (its answer lost) succeeds again
            if art.size != size:
                raise TwirpError("failed_precondition", "the artifact is already finalized")
            return {"ok": True, "artifact_id": str(art.id)}
        self._store.seal(art.blob, size, digest)
        with self._lock:
            art.size, art.digest, art.finalized = size, digest, True
        return {"ok": True, "artifact_id": str(art.id)}

    def _list_artifacts(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, _ = self._ids(who, req, same_job=False)
        name, art_id, now = req.opt_text("name_filter"), req.integer("id_filter"), time.time()
        with self._lock:
            found = sorted(
                (
                    a
                    for a in self._artifacts.get(run, {}).values()
                    if a.finalized
                    and (a.expires is None or a.expires > now)
                    and (name is None or a.name == name)
                    and (art_id is None or a.id == art_id)
                ),
                key=lambda a: a.id,
            )
        out = []
        for a in found:
            item = {
                "workflow_run_backend_id": a.run,
                "workflow_job_run_backend_id": a.job,
                "database_id": str(a.id),
                "name": a.name,
                "size": str(a.size),
                "created_at": _rfc3339(a.created),
            }
            if a.digest:
                item["digest"] = a.digest
            out.append(item)
        return {"artifacts": out}

    def _signed_artifact_url(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        with self._lock:
            art = self._find_artifact(run, job, req.text("name"), finalized=True)
        return {"signed_url": self._signed_url(art.blob, "r")}

    def _delete_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        with self._lock:
            art = self._find_artifact(run, job, req.text("name"), finalized=False)
            del self._artifacts[run][art.name]
        self._store.delete(art.blob)
        return {"ok": True, "artifact_id": str(art.id)}

    # -- cache service ---------------------------------------------------------------------------
    @staticmethod
    def _write_scope(who: _Who) -> str | None:
        """The ref the caller's entries are saved under: its first writable cache scope."""
        return next((s.scope for s in who.scopes if s.permission & SCOPE_WRITE), None)

    def _create_cache_entry(self, who: _Who, req: _Req) -> dict[str, Any]:
        key, version = req.text("key"), req.text("version")
        if len(key) > 512 or "," in key:
            raise TwirpError("invalid_argument", "key must be at most 512 characters, no commas")
        scope = self._write_scope(who)
        if scope is None:
            return {"ok": False, "message": "cache write denied: the token has no writable scope"}
        with self._lock:
            if (scope, key, version) in self._caches:
                raise TwirpError(
                    "already_exists",
                    "cache entry with the same key, version, and scope already exists",
                )
            entry = _CacheEntry(
                next(self._next_id),
                key,
                version,
                f"actions-cache/{secrets.token_hex(12)}",
                time.time(),
                scope=scope,
            )
            self._store.create(entry.blob, "application/octet-stream")
            self._caches[(scope, key, version)] = entry
        return {"ok": True, "signed_upload_url": self._signed_url(entry.blob, "cw")}

    def _finalize_cache_entry(self, who: _Who, req: _Req) -> dict[str, Any]:
        key, version, size = req.text("key"), req.text("version"), req.integer("size_bytes") or 0
        scope = self._write_scope(who)
        if scope is None:
            return {"ok": False, "message": "cache write denied: the token has no writable scope"}
        with self._lock:
            entry = self._caches.get((scope, key, version))
        if entry is None:
            raise TwirpError("not_found", f"no cache entry reserved for key {key!r}")
        if entry.finalized:  # a retried finalize (its answer lost) succeeds again
            if entry.size != size:
                raise TwirpError("failed_precondition", "the cache entry is already finalized")
            return {"ok": True, "entry_id": str(entry.id)}
        self._store.seal(entry.blob, size, None)
        with self._lock:
            entry.size, entry.finalized = size, True
        return {"ok": True, "entry_id": str(entry.id)}

    def _cache_download_url(self, who: _Who, req: _Req) -> dict[str, Any]:
        """The newest match in the first readable scope that has one (GitHub's order: the
        job's own ref, then the base and default branches); per scope the key, then each
        restore key, each an exact match first, then the newest entry it prefixes."""
        key, version, restore = req.text("key"), req.text("version"), req.texts("restore_keys")
        scopes = [s.scope for s in who.scopes if s.permission & SCOPE_READ]
        if not scopes:
            raise TwirpError("permission_denied", "cache read denied: the token has no scope")
        if self.require_restore_keys and not restore:
            return dict(_MISS)
        with self._lock:
            saved = sorted(
                (e for e in self._caches.values() if e.finalized and e.version == version),
                key=lambda e: (e.created, e.id),
                reverse=True,
            )
        for scope in scopes:
            hit = _match([e for e in saved if e.scope == scope], [key, *restore])
            if hit is not None:
                return {
                    "ok": True,
                    "signed_download_url": self._signed_url(hit.blob, "r"),
                    "matched_key": hit.key,
                }
        return dict(_MISS)

    def _rpc(
        self, service: str, method: str, authorization: str | None, content_type: str, body: bytes
    ) -> dict[str, Any]:
        """Run one Twirp call; raise TwirpError for a Twirp error answer."""
        rpc = self._rpcs[(service, method)]
        if not content_type.split(";")[0].strip().lower() == "application/json":
            raise TwirpError("bad_route", f"unexpected Content-Type: {content_type!r}")
        who = self._identity(authorization)
        try:
            parsed = json.loads(body or b"{}")
        except ValueError as exc:
            raise TwirpError("malformed", f"the json request could not be decoded: {exc}") from None
        if not isinstance(parsed, dict):
            raise TwirpError("malformed", "the json request must be an object")
        name = parsed.get("name") or parsed.get("name_filter") or parsed.get("nameFilter")
        with self._lock:
            self._call_log.append((method, who[1], name if isinstance(name, str) else None))
        return rpc(who, _Req(parsed))


def _match(entries: list[_CacheEntry], wanted: list[str]) -> _CacheEntry | None:
    """The first of ``wanted`` that matches: exactly, else the first (newest) it prefixes."""
    for prefix in wanted:
        hit = next((e for e in entries if e.key == prefix), None) or next(
            (e for e in entries if e.key.startswith(prefix)), None
        )
        if hit is not None:
            return hit
    return None
