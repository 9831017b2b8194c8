"""The emulator's records, faults and blob storage: plain data behind its services."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
CACHE_SERVICE = "github.actions.results.api.v1.CacheService"
FAULT_KINDS = frozenset({"429", "500", "503", "drop", "drop_after"})
#: artifacts one job may create in a run, deleted ones included (the upload-artifact docs)
ARTIFACT_LIMIT_PER_JOB = 500
#: the retention CreateArtifact accepts in ``expires_at``, days from now (GitHub's range), and
#: the default when a request sends none (the repository's default setting)
RETENTION_DAYS = (1, 90)
DEFAULT_RETENTION_DAYS = 90
DAY = 86400.0
#: the answer to CreateArtifact with ``storage_quota_hit``: GitHub's exact text is not known;
#: ``@actions/artifact`` recognises the quota by "insufficient usage" in the message
QUOTA_MESSAGE = (
    "insufficient usage: the artifact storage quota has been hit, "
    "unable to upload any new artifacts"
)
#: the repository every emulated run belongs to (``GITHUB_REPOSITORY``)
REPOSITORY = "emulated/repository"
INVALID_NAME_CHARS = '":<>|*?\\/\r\n'
#: the bits of a cache scope's ``Permission`` in the runtime token's ``ac`` claim (as GitHub's)
SCOPE_READ, SCOPE_WRITE = 1, 2
STORAGE_VERSION = "2025-05-05"
_CHUNK = 1 << 20
_MAX_RPC_BODY = 4 << 20
_TWIRP_STATUS = {
    "invalid_argument": 400,
    "malformed": 400,
    "out_of_range": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "aborted": 409,
    "failed_precondition": 412,
    "resource_exhausted": 429,
    "internal": 500,
    "unavailable": 503,
}


class TwirpError(Exception):
    """A Twirp error: JSON ``{"code", "msg"}`` with the code's HTTP status."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.code, self.msg, self.status = code, msg, _TWIRP_STATUS[code]


class BlobError(Exception):
    """An Azure Storage error: XML ``<Error><Code/><Message/></Error>`` and ``x-ms-error-code``."""

    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(f"{status} {code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


@dataclass
class Faults:
    """Fault injection, settable at runtime; decisions are drawn from a ``seed``-ed generator.

    ``rate`` of the calls get one of ``kinds``: "429" (with ``Retry-After: retry_after``), "500",
    "503", "drop" (connection closed, request not applied) or "drop_after" (applied, then the
    connection is closed without an answer). ``latency`` seconds are added to every call. Faults
    hit Twirp calls and the REST jobs API (method ``ListJobsForWorkflowRunAttempt``), only
    ``methods`` if given, and with ``blobs`` blob requests too.
    """

    rate: float = 0.0
    kinds: Iterable[str] = frozenset({"503"})
    latency: float = 0.0
    seed: int = 0
    retry_after: int = 1
    blobs: bool = False
    methods: Iterable[str] | None = None

    def __post_init__(self) -> None:
        self.kinds = frozenset(self.kinds)
        if not self.kinds or not self.kinds <= FAULT_KINDS:
            raise ValueError(f"fault kinds must be a non-empty subset of {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be within [0, 1]")
        if self.methods is not None:
            self.methods = frozenset(self.methods)


@dataclass
class _Blob:
    """One block blob: committed content, its block list and the staged (uncommitted) blocks."""

    key: str
    content_type: str
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    etag: str = ""
    modified: float = 0.0
    created: float = field(default_factory=time.time)
    blocks: list[tuple[str, int]] = field(default_factory=list)
    staged: dict[str, Path] = field(default_factory=dict)
    sealed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Artifact:
    id: int
    run: str
    job: str
    name: str
    blob: str
    created: float
    expires: float
    size: int = 0
    digest: str | None = None
    finalized: bool = False
    version: int | None = None
    mime_type: str | None = None

    def describe(self) -> dict[str, Any]:
        """What tests may look at: the request's fields and the artifact's state."""
        return {
            "name": self.name, "run": self.run, "job": self.job, "id": self.id,
            "version": self.version, "mime_type": self.mime_type,
            "expires_at": _rfc3339(self.expires), "finalized": self.finalized, "size": self.size,
        }  # fmt: skip


@dataclass
class _CacheEntry:
    id: int
    key: str
    version: str
    blob: str
    created: float
    size: int = 0
    finalized: bool = False
    #: the ref (``refs/heads/<branch>``, ``refs/pull/<n>/merge``) whose run saved the entry
    scope: str = ""


@dataclass(frozen=True)
class CacheScope:
    """One entry of the ``ac`` claim: a ref whose cache entries the token may read or write."""

    scope: str
    permission: int


class _Who(NamedTuple):
    """Who calls: the run and job of the token's ``Actions.Results`` scope, its cache scopes."""

    run: str
    job: str
    scopes: tuple[CacheScope, ...] = ()


def backend_run(run_id: str, attempt: int) -> str:
    """The workflow run backend id of one attempt in the emulator's tokens.

    Attempt 1 keeps the run id; attempt N is ``<run>-attempt<N>``. GitHub's runtime token names
    a backend id per attempt, and the artifact service answers a job for its own attempt only
    (a job of attempt 2 does not find attempt 1's artifacts: docs/architecture.md, "Re-runs").
    """
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    return run_id if attempt == 1 else f"{run_id}-attempt{attempt}"


def attempt_of(backend: str) -> tuple[str, int]:
    """The run id and attempt of a workflow run backend id made by `backend_run`."""
    match = re.fullmatch(r"(.+)-attempt(\d+)", backend)
    return (match[1], int(match[2])) if match else (backend, 1)


def full_ref(ref: str) -> str:
    """``refs/heads/<ref>`` for a branch name; a full ref (``refs/...``) as it is."""
    return ref if ref.startswith("refs/") else f"refs/heads/{_check_id(ref, 'ref')}"


def access_claim(ref: str, base_ref: str | None, default_branch: str) -> str:
    """The ``ac`` claim of a job on ``ref``, as GitHub issues it: the job's own ref read/write,
    then read-only the pull request's base branch (``base_ref``) and the default branch."""
    scopes = [{"Scope": full_ref(ref), "Permission": SCOPE_READ | SCOPE_WRITE}]
    for other in (base_ref, default_branch):
        if other and all(full_ref(other) != s["Scope"] for s in scopes):
            scopes.append({"Scope": full_ref(other), "Permission": SCOPE_READ})
    return json.dumps(scopes, separators=(",", ":"))


def ref_env(ref: str | None, base_ref: str | None) -> dict[str, str]:
    """``GITHUB_REF``, ``GITHUB_REF_NAME`` and ``GITHUB_BASE_REF`` of a job, those given."""
    env = {}
    if ref:
        full = env["GITHUB_REF"] = full_ref(ref)
        env["GITHUB_REF_NAME"] = re.sub(r"^refs/(heads|tags|pull)/", "", full)
    if base_ref:
        env["GITHUB_BASE_REF"] = base_ref
    return env


def parse_access(claim: object) -> tuple[CacheScope, ...]:
    """The cache scopes of an ``ac`` claim (a JSON string); `ValueError` if malformed."""
    if claim is None:
        return ()
    items = json.loads(claim) if isinstance(claim, str) else None
    if not isinstance(items, list):
        raise ValueError("the ac claim is not a JSON list")
    scopes = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("Scope"), str):
            raise ValueError("an ac entry has no Scope")
        scopes.append(CacheScope(item["Scope"], int(item.get("Permission", 0))))
    return tuple(scopes)


class _BlobStore:
    """Block blobs on disk (one file per committed blob or staged block); thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs: dict[str, _Blob] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()

    def temp_path(self) -> Path:
        """A fresh file name for incoming bytes."""
        (self.root / "staging").mkdir(parents=True, exist_ok=True)
        return self.root / "staging" / f"{next(self._seq)}-{secrets.token_hex(4)}.part"

    def create(self, key: str, content_type: str, filename: str | None = None) -> None:
        with self._lock:
            self._blobs[key] = _Blob(key, content_type, filename)

    def get(self, key: str) -> _Blob:
        with self._lock:
            blob = self._blobs.get(key)
        if blob is None:
            raise BlobError(404, "BlobNotFound", "The specified blob does not exist.")
        return blob

    def delete(self, key: str) -> None:
        with self._lock:
            blob = self._blobs.pop(key, None)
        if blob is not None:
            with blob.lock:
                for path in [blob.path, *blob.staged.values()]:
                    if path is not None:
                        path.unlink(missing_ok=True)

    @staticmethod
    def _check_writable(blob: _Blob) -> None:
        if blob.sealed:
            raise BlobError(409, "BlobImmutableDueToPolicy", "The blob is sealed (finalized).")

    def stage(self, key: str, block_id: str, tmp: Path) -> None:
        """Put Block: keep ``tmp`` as the uncommitted block ``block_id``."""
        blob = self.get(key)
        with blob.lock:
            self._check_writable(blob)
            old = blob.staged.pop(block_id, None)
            if old is not None:
                old.unlink(missing_ok=True)
            blob.staged[block_id] = tmp

    def put(self, key: str, tmp: Path, content_type: str | None) -> _Blob:
        """Put Blob: ``tmp`` becomes the whole content; uncommitted blocks are discarded."""
        blob = self.get(key)
        with blob.lock:
            self._check_writable(blob)
            self._replace(blob, tmp, [])
            blob.content_type = content_type or blob.content_type
            return blob

    def commit(self, key: str, entries: list[tuple[str, str]], content_type: str | None) -> _Blob:
        """Put Block List: assemble blocks in list order; uncommitted blocks not named are lost."""
        blob = self.get(key)
        with blob.lock:
            self._check_writable(blob)
            offsets, pos = {}, 0
            for block_id, size in blob.blocks:
                offsets[block_id] = (pos, size)
                pos += size
            tmp, new_blocks = self.temp_path(), []
            with open(tmp, "wb") as out:
                for kind, block_id in entries:
                    staged = blob.staged.get(block_id) if kind != "Committed" else None
                    if staged is not None:
                        with open(staged, "rb") as src:
                            size = _copy(src, out, None)
                    elif kind != "Uncommitted" and block_id in offsets and blob.path:
                        start, size = offsets[block_id]
                        with open(blob.path, "rb") as src:
                            src.seek(start)
                            _copy(src, out, size)
                    else:
                        tmp.unlink(missing_ok=True)
                        raise BlobError(
                            400,
                            "InvalidBlockList",
                            "The specified block list is "
                            f"invalid: block {block_id!r} ({kind}) not found.",
                        )
                    new_blocks.append((block_id, size))
            self._replace(blob, tmp, new_blocks)
            blob.content_type = content_type or blob.content_type
            return blob

    def _replace(self, blob: _Blob, tmp: Path, blocks: list[tuple[str, int]]) -> None:
        final = self.root / "blobs" / blob.key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(final)
        for path in blob.staged.values():
            path.unlink(missing_ok=True)
        blob.staged.clear()
        blob.path, blob.blocks, blob.size = final, blocks, final.stat().st_size
        blob.modified = time.time()
        blob.etag = f'"0x{uuid.uuid4().hex[:15].upper()}"'

    def seal(self, key: str, size: int, sha256: str | None) -> None:
        """Check committed size (and ``sha256:<hex>`` digest) and make the blob read-only."""
        blob = self.get(key)
        with blob.lock:
            if blob.path is None:
                raise TwirpError("failed_precondition", "no content was committed to the blob")
            if blob.size != size:
                raise TwirpError(
                    "invalid_argument", f"size {size} does not match the uploaded {blob.size} bytes"
                )
            if sha256 is not None:
                digest = hashlib.sha256()
                with open(blob.path, "rb") as src:
                    for chunk in iter(lambda: src.read(_CHUNK), b""):
                        digest.update(chunk)
                if sha256.lower() != f"sha256:{digest.hexdigest()}":
                    raise TwirpError("invalid_argument", "hash does not match the uploaded bytes")
            blob.sealed = True


def _copy(src: Any, out: Any, limit: int | None) -> int:
    """Copy ``limit`` bytes (all if None) from ``src`` to ``out``; return the count."""
    done = 0
    while limit is None or done < limit:
        data = src.read(_CHUNK if limit is None else min(_CHUNK, limit - done))
        if not data:
            break
        out.write(data)
        done += len(data)
    return done


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


class _Req:
    """A Twirp JSON request body, read in snake_case or camelCase, wrappers bare or ``{value}``."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.d = {_snake(k): v for k, v in body.items()}

    def _unwrap(self, key: str) -> Any:
        value = self.d.get(key)
        return value.get("value") if isinstance(value, dict) else value

    def text(self, key: str, required: bool = True) -> str:
        value = self._unwrap(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise TwirpError("malformed", f"{key} must be a string")
        if required and not value:
            raise TwirpError("invalid_argument", f"{key} is required")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key, required=False) if self._unwrap(key) is not None else None

    def integer(self, key: str) -> int | None:
        value = self._unwrap(key)
        if value is None:
            return None
        try:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise ValueError(value)
            return int(value)
        except ValueError:
            raise TwirpError("malformed", f"{key} must be an integer") from None

    def texts(self, key: str) -> list[str]:
        value = self.d.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TwirpError("malformed", f"{key} must be a list of strings")
        return value

    def stamp(self, key: str) -> float | None:
        value = self.opt_text(key)
        if not value:
            return None
        try:
            value = re.sub(r"(\.\d{6})\d+", r"\1", value).replace("Z", "+00:00")
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            raise TwirpError("malformed", f"{key} must be an RFC 3339 timestamp") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_id(value: str, what: str) -> str:
    if not value or any(c in value for c in ": \t\r\n"):
        raise ValueError(f"{what} must be non-empty without ':' or whitespace: {value!r}")
    return value
