"""The emulator's Twirp methods: artifacts (v4) and cache entries (v2)."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .model import (
    ARTIFACT_LIMIT_PER_JOB,
    DAY,
    DEFAULT_RETENTION_DAYS,
    INVALID_NAME_CHARS,
    QUOTA_MESSAGE,
    RETENTION_DAYS,
    SCOPE_READ,
    SCOPE_WRITE,
    TwirpError,
    _Artifact,
    _BlobStore,
    _CacheEntry,
    _Req,
    _rfc3339,
    _Who,
    attempt_of,
    backend_run,
)

_MISS = {"ok": False, "signed_download_url": "", "matched_key": ""}


class TwirpMethods:
    """The Twirp methods of `GitHubEmulator` (a mixin over its state)."""

    # state and helpers of GitHubEmulator
    _lock: threading.Lock
    _artifacts: dict[str, list[_Artifact]]  # artifact namespace (`_space`) -> its artifacts
    _created: Counter[tuple[str, str]]  # (run backend id, job) -> CreateArtifact successes
    _caches: dict[tuple[str, str, str], _CacheEntry]
    _blobs: _BlobStore | None
    _call_log: list[tuple[str, str, str | None]]
    _next_id: Iterator[int]
    _rpcs: dict[tuple[str, str], Callable[[_Who, _Req], dict[str, Any]]]
    artifact_limit: int
    require_restore_keys: bool
    unfinalized_reserves_name: bool
    unfinalized_deletable: bool
    unfinalized_listed: bool
    list_limit: int | None
    artifacts_across_attempts: bool
    storage_quota_hit: bool
    clock_offset: float

    def _identity(self, authorization: str | None) -> _Who:
        raise NotImplementedError

    def _signed_url(self, key: str, perm: str) -> str:
        raise NotImplementedError

    @property
    def _store(self) -> _BlobStore:
        if self._blobs is None:
            raise RuntimeError("the emulator is not started")
        return self._blobs

    # -- artifact service behaviours and state --------------------------------------------------
    def default_behaviours(self) -> None:
        """Set every artifact service behaviour to its default (as GitHub is seen to do)."""
        #: CreateArtifact successes allowed per job of a run attempt, deleted ones included
        self.artifact_limit = ARTIFACT_LIMIT_PER_JOB
        #: True: a created, unfinalized artifact holds its name (what GitHub is seen to do)
        self.unfinalized_reserves_name = True
        #: True: DeleteArtifact removes an artifact that was never finalized
        self.unfinalized_deletable = True
        #: True: ListArtifacts (and GetSignedArtifactURL) show unfinalized artifacts, size 0
        self.unfinalized_listed = False
        #: None, or N: an unfiltered ListArtifacts answers the newest N artifacts only
        self.list_limit: int | None = None
        #: True: the attempts of a workflow run share their artifacts (as Gitea emulates)
        self.artifacts_across_attempts = False
        #: True: CreateArtifact answers that the account's artifact storage quota is used up
        self.storage_quota_hit = False
        #: seconds added to the artifact clock (expiry, creation times): see `advance`
        self.clock_offset = 0.0

    def advance(self, seconds: float) -> None:
        """Move the artifact clock ahead (artifacts past their ``expires_at`` are gone)."""
        with self._lock:
            self.clock_offset += seconds

    def artifacts(self, run_id: str | None = None, attempt: int = 1) -> list[dict[str, Any]]:
        """Every artifact (of one run attempt if given, finalized or not, expired too), by id:
        name, run, job, id, version, mime_type, expires_at, finalized, size."""
        run = None if run_id is None else backend_run(run_id, attempt)
        with self._lock:
            found = [a for arts in self._artifacts.values() for a in arts]
        return [a.describe() for a in sorted(found, key=lambda a: a.id) if run in (None, a.run)]

    def creations(self, run_id: str, job_id: str, attempt: int = 1) -> int:
        """CreateArtifact successes of one job in one run attempt, deleted artifacts included."""
        with self._lock:
            return self._created[(backend_run(run_id, attempt), job_id)]

    # -- artifact service ------------------------------------------------------------------------
    def _now(self) -> float:
        """The emulator's clock for artifacts (`GitHubEmulator.advance` moves it)."""
        return time.time() + self.clock_offset

    def _space(self, run: str) -> str:
        """The artifact namespace of a workflow run backend id: one per attempt, or one for
        every attempt of the run with ``artifacts_across_attempts``."""
        return attempt_of(run)[0] if self.artifacts_across_attempts else run

    def _alive(self, run: str, now: float) -> list[_Artifact]:
        """The artifacts ``run`` sees that have not expired (call under ``_lock``)."""
        return [a for a in self._artifacts.get(self._space(run), []) if a.expires > now]

    def _ids(self, who: _Who, req: _Req, same_job: bool) -> tuple[str, str]:
        run = req.text("workflow_run_backend_id")
        job = req.text("workflow_job_run_backend_id")
        if run != who[0] or (same_job and job != who[1]):
            raise TwirpError(
                "permission_denied", "the backend ids do not match the ACTIONS_RUNTIME_TOKEN"
            )
        return run, job

    @staticmethod
    def _expiry(stamp: float | None, now: float) -> float:
        """When an artifact expires: ``expires_at`` if within GitHub's 1 to 90 days (an hour
        of slack for clocks and daylight saving), else the repository's default."""
        if stamp is None:
            return now + DEFAULT_RETENTION_DAYS * DAY
        low, high = RETENTION_DAYS
        if not now + low * DAY - 3600 <= stamp <= now + high * DAY + 3600:
            raise TwirpError(
                "invalid_argument",
                f"expires_at must be between {low} and {high} days from now (retention days)",
            )
        return stamp

    def _create_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name = req.text("name")
        bad = sorted({repr(c) for c in INVALID_NAME_CHARS if c in name})
        if bad:
            raise TwirpError(
                "invalid_argument",
                f"artifact name {name!r} contains invalid characters: {', '.join(bad)}",
            )
        mime, version, now = req.opt_text("mime_type"), req.integer("version"), self._now()
        expires = self._expiry(req.stamp("expires_at"), now)
        if self.storage_quota_hit:
            raise TwirpError("resource_exhausted", QUOTA_MESSAGE)
        with self._lock:
            reserves = self.unfinalized_reserves_name
            if any(a.name == name and (a.finalized or reserves) for a in self._alive(run, now)):
                raise TwirpError(
                    "already_exists",
                    "an artifact with this name already exists on the workflow run",
                )
            if self._created[(run, job)] >= self.artifact_limit:
                raise TwirpError(
                    "failed_precondition",
                    f"the job has reached the limit of {self.artifact_limit} artifacts "
                    "(artifacts created, deleted ones included)",
                )
            self._created[(run, job)] += 1
            art_id = next(self._next_id)
            zipped = (mime or "application/zip") == "application/zip"
            key = f"actions-results/{art_id}-{secrets.token_hex(8)}" + (".zip" * zipped)
            filename = f"{name}.zip" if zipped and not name.endswith(".zip") else name
            self._store.create(key, mime or "application/zip", filename)
            art = _Artifact(art_id, run, job, name, key, now, expires, version=version)
            art.mime_type = mime
            self._artifacts.setdefault(self._space(run), []).append(art)
        return {"ok": True, "signed_upload_url": self._signed_url(key, "cw")}

    def _find_artifact(self, run: str, job: str, name: str, unfinalized: bool) -> _Artifact:
        """The artifact ``name`` of ``job`` (a finalized one first, then the newest); call
        under ``_lock``. Unfinalized ones only if ``unfinalized``."""
        found = [
            a
            for a in self._alive(run, self._now())
            if a.job == job and a.name == name and (a.finalized or unfinalized)
        ]
        if not found:
            raise TwirpError("not_found", f"artifact {name!r} not found")
        return max(found, key=lambda a: (a.finalized, a.id))

    def _finalize_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name, size, digest = req.text("name"), req.integer("size") or 0, req.opt_text("hash")
        with self._lock:
            art = self._find_artifact(run, job, name, unfinalized=True)
            if art.finalized:  # a retried finalize (its answer lost) succeeds again
                if art.size != size:
                    raise TwirpError("failed_precondition", "the artifact is already finalized")
                return {"ok": True, "artifact_id": str(art.id)}
            self._check_name_free(run, art)
        self._store.seal(art.blob, size, digest)
        with self._lock:
            self._check_name_free(run, art)  # a racer of the name may have finalized meanwhile
            art.size, art.digest, art.finalized = size, digest, True
        return {"ok": True, "artifact_id": str(art.id)}

    def _check_name_free(self, run: str, art: _Artifact) -> None:
        """Names are unique among finalized artifacts of a run (call under ``_lock``)."""
        alive = self._alive(run, self._now())
        if any(a is not art and a.finalized and a.name == art.name for a in alive):
            raise TwirpError(
                "already_exists", "an artifact with this name already exists on the workflow run"
            )

    def _list_artifacts(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, _ = self._ids(who, req, same_job=False)
        name, art_id = req.opt_text("name_filter"), req.integer("id_filter")
        with self._lock:
            found = sorted(
                (
                    a
                    for a in self._alive(run, self._now())
                    if (a.finalized or self.unfinalized_listed)
                    and (name is None or a.name == name)
                    and (art_id is None or a.id == art_id)
                ),
                key=lambda a: a.id,
            )
        if self.list_limit is not None and name is None and art_id is None:
            found = found[max(0, len(found) - self.list_limit) :]
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
            art = self._find_artifact(run, job, req.text("name"), self.unfinalized_listed)
        return {"signed_url": self._signed_url(art.blob, "r")}

    def _delete_artifact(self, who: _Who, req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        with self._lock:
            art = self._find_artifact(run, job, req.text("name"), self.unfinalized_deletable)
            self._artifacts[self._space(run)].remove(art)
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
