"""A local emulator of GitHub Actions' artifact service (v4) and cache service (v2).

Both are Twirp JSON services under ``POST /twirp/github.actions.results.api.v1.<Service>/<Method>``
authenticated by the runner's ``ACTIONS_RUNTIME_TOKEN``; their bytes travel through signed URLs of
an Azure-blob-like store (``/blob/...``). The official npm clients ``@actions/artifact`` and
``@actions/cache`` run against it unchanged (see ``tests/js``).

Wire choices (checked against actions/toolkit): requests are read in snake_case or camelCase;
answers are snake_case with int64 as strings (protojson, as github.com answers); every error is
``{"code", "msg"}`` with Twirp's HTTP status. Artifact names are unique per workflow run from
CreateArtifact on (an unfinalized artifact reserves its name: 409 ``already_exists``); only
finalized artifacts are listed. A second CreateCacheEntry for a key+version that is reserved or
saved gets 409 ``already_exists``; the cache is one namespace per emulator (one repository). Blob
bytes live under ``data_dir`` (else in a temporary folder that ``stop()`` removes together with all
state); metadata lives in memory.

It also serves the REST jobs API of its runs (``GET /repos/{owner}/{repo}/actions/runs/{run}
[/attempts/{n}]/jobs`` with the run's ``GITHUB_TOKEN``, paginated): a job is ``in_progress``
from its first `GitHubEmulator.env` and ``completed`` after `GitHubEmulator.finish_job`, which
tests call when a worker process ends, as GitHub does when a job's runner finishes it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import random
import re
import secrets
import shlex
import socket
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
CACHE_SERVICE = "github.actions.results.api.v1.CacheService"
FAULT_KINDS = frozenset({"429", "500", "503", "drop", "drop_after"})
ARTIFACT_LIMIT_PER_JOB = 500
#: the repository every emulated run belongs to (``GITHUB_REPOSITORY``)
REPOSITORY = "emulated/repository"
INVALID_NAME_CHARS = '":<>|*?\\/\r\n'
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
    expires: float | None = None
    size: int = 0
    digest: str | None = None
    finalized: bool = False


@dataclass
class _CacheEntry:
    id: int
    key: str
    version: str
    blob: str
    created: float
    size: int = 0
    finalized: bool = False


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


class GitHubEmulator:
    """Artifact v4 + cache v2 services on ``host:port``; one artifact namespace per workflow run.

    Use as a context manager or call ``start()``/``stop()``; give a job's ``env(run, job)`` to the
    process under test. ``calls`` counts Twirp calls by method, ``blob_calls`` blob requests by
    operation; ``faults`` injects errors and latency.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, data_dir: Path | None = None
    ) -> None:
        self.host, self.port = host, port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.artifact_limit = ARTIFACT_LIMIT_PER_JOB
        self.url_ttl = 6 * 3600.0
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._blob_calls: Counter[str] = Counter()
        self._call_log: list[tuple[str, str, str | None]] = []
        #: False: the jobs API answers 403, as for a token without ``actions: read``
        self.jobs_api = True
        self._jobs: dict[str, dict[str, dict[str, Any]]] = {}  # run -> job -> jobs API record
        self._job_numbers = itertools.count(51725241954)
        self._rest_tokens: dict[str, str] = {}  # GITHUB_TOKEN -> run
        self._rest_calls = 0
        self._faults = Faults()
        self._rng = random.Random(0)
        self._next_id = itertools.count(1)
        self._artifacts: dict[str, dict[str, _Artifact]] = {}
        self._caches: dict[tuple[str, str], _CacheEntry] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._blobs: _BlobStore | None = None
        self._rpcs: dict[tuple[str, str], Callable[[tuple[str, str], _Req], dict[str, Any]]] = {
            (ARTIFACT_SERVICE, "CreateArtifact"): self._create_artifact,
            (ARTIFACT_SERVICE, "FinalizeArtifact"): self._finalize_artifact,
            (ARTIFACT_SERVICE, "ListArtifacts"): self._list_artifacts,
            (ARTIFACT_SERVICE, "GetSignedArtifactURL"): self._signed_artifact_url,
            (ARTIFACT_SERVICE, "DeleteArtifact"): self._delete_artifact,
            (CACHE_SERVICE, "CreateCacheEntry"): self._create_cache_entry,
            (CACHE_SERVICE, "FinalizeCacheEntryUpload"): self._finalize_cache_entry,
            (CACHE_SERVICE, "GetCacheEntryDownloadURL"): self._cache_download_url,
        }

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> GitHubEmulator:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        if self._blobs is None:
            if self.data_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="ciflow-emulator-")
                root = Path(self._tmp.name)
            else:
                root = self.data_dir
                root.mkdir(parents=True, exist_ok=True)
            self._blobs = _BlobStore(root)
        server_cls: type[_Server] = _Server6 if ":" in self.host else _Server
        self._server = server_cls((self.host, self.port), _Handler)
        self._server.emulator = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="ciflow-github-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving. State survives a restart only with a ``data_dir``; else it is dropped."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = self._blobs = None
            with self._lock:
                self._artifacts.clear()
                self._caches.clear()

    def __enter__(self) -> GitHubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL (``http://host:port/``), the value of ``ACTIONS_RESULTS_URL``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        host = "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # -- identities ------------------------------------------------------------------------------
    def token(self, run_id: str, job_id: str) -> str:
        """An HS256 JWT like the runner's, ``scp`` carrying ``Actions.Results:<run>:<job>``."""
        run, job = _check_id(run_id, "run_id"), _check_id(job_id, "job_id")
        now = int(time.time())
        claims = {
            "scp": f"Actions.GenericRead:00000000-0000-0000-0000-000000000000 "
            f"Actions.UploadArtifacts:{run}:{job} Actions.Results:{run}:{job}",
            "ac": json.dumps([{"Scope": "refs/heads/main", "Permission": 3}]),
            "iss": "ciflow-github-emulator",
            "aud": "vso:ciflow-github-emulator",
            "nbf": now - 60,
            "iat": now - 60,
            "exp": now + 24 * 3600,
        }
        head = _b64url(b'{"typ":"JWT","alg":"HS256"}')
        body = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64url(sig)}"

    def env(self, run_id: str, job_id: str) -> dict[str, str]:
        """The variables a runner gives a JavaScript action for these services (one job).

        The job starts (``in_progress`` in the jobs API) on the first call for it. Besides the
        runtime variables: ``GITHUB_API_URL``/``GITHUB_REPOSITORY``/``GITHUB_TOKEN`` for the
        REST jobs API, and ``CIFLOW_JOB_ID``, what the reusable action exports from
        ``job.check_run_id``.
        """
        job = self._start_job(run_id, job_id)
        return {
            "GITHUB_API_URL": self.url,
            "GITHUB_REPOSITORY": REPOSITORY,
            "GITHUB_TOKEN": self._rest_token(run_id),
            "CIFLOW_JOB_ID": str(job["id"]),
            "RUNNER_NAME": str(job["runner_name"]),
            "ACTIONS_RESULTS_URL": self.url,
            "ACTIONS_RUNTIME_URL": self.url,
            "ACTIONS_CACHE_URL": self.url,
            "ACTIONS_RUNTIME_TOKEN": self.token(run_id, job_id),
            "ACTIONS_CACHE_SERVICE_V2": "True",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": run_id,
            "GITHUB_RUN_ATTEMPT": "1",
            "GITHUB_JOB": job_id,
        }

    # -- the REST jobs API ----------------------------------------------------------------------
    def _rest_token(self, run_id: str) -> str:
        with self._lock:
            for token, run in self._rest_tokens.items():
                if run == run_id:
                    return token
            token = "ghs_" + secrets.token_hex(18)
            self._rest_tokens[token] = run_id
            return token

    def _start_job(self, run_id: str, job_id: str) -> dict[str, Any]:
        with self._lock:
            jobs = self._jobs.setdefault(run_id, {})
            if job_id not in jobs:
                number = next(self._job_numbers)
                jobs[job_id] = {
                    "id": number,
                    "run_id": run_id,
                    "run_attempt": 1,
                    "name": job_id,
                    "status": "in_progress",
                    "conclusion": None,
                    "started_at": _rfc3339(time.time()),
                    "completed_at": None,
                    "runner_name": f"GitHub Actions {number % 1000}",
                }
            return jobs[job_id]

    def finish_job(self, run_id: str, job_id: str, conclusion: str = "failure") -> None:
        """Mark a job ``completed`` in the jobs API, as GitHub does when its runner ends it."""
        job = self._start_job(run_id, job_id)
        with self._lock:
            job.update(
                status="completed", conclusion=conclusion, completed_at=_rfc3339(time.time())
            )

    @property
    def rest_calls(self) -> int:
        """REST (jobs API) requests received."""
        with self._lock:
            return self._rest_calls

    def _list_jobs(self, path: str, query: dict[str, list[str]], auth: str | None) -> Any:
        """GET /repos/{owner}/{repo}/actions/runs/{run}[/attempts/{n}]/jobs: (status, body)."""
        with self._lock:
            self._rest_calls += 1
        parts = path.strip("/").split("/")[1:]  # owner, repo, "actions", "runs", run, ...
        shape = len(parts) in (6, 8) and parts[2:4] == ["actions", "runs"] and parts[-1] == "jobs"
        if not shape or (len(parts) == 8 and parts[5] != "attempts"):
            return 404, {"message": "Not Found"}
        scheme, _, token = (auth or "").partition(" ")
        with self._lock:
            run = (
                self._rest_tokens.get(token.strip())
                if scheme.lower() in ("bearer", "token")
                else None
            )
            if run is None:
                return 401, {"message": "Bad credentials"}
            if not self.jobs_api:
                return 403, {"message": "Resource not accessible by integration"}
            if "/".join(parts[:2]) != REPOSITORY or parts[4] != run:
                return 404, {"message": "Not Found"}
            jobs = [dict(j) for j in self._jobs.get(run, {}).values()]
        try:
            per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
            page = max(1, int(query.get("page", ["1"])[0]))
        except ValueError:
            return 422, {"message": "Validation Failed"}
        chunk = jobs[(page - 1) * per_page : page * per_page]
        return 200, {"total_count": len(jobs), "jobs": chunk}

    def _identity(self, authorization: str | None) -> tuple[str, str]:
        scheme, _, tok = (authorization or "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise ValueError("no bearer token")
            head, body, sig = tok.strip().split(".")
            want = hmac.new(self._secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
            if json.loads(_unb64url(head)).get("alg") != "HS256" or not hmac.compare_digest(
                _unb64url(sig), want
            ):
                raise ValueError("bad signature")
            claims = json.loads(_unb64url(body))
            if float(claims.get("exp", 0)) < time.time():
                raise ValueError("token expired")
            for scope in str(claims.get("scp", "")).split():
                parts = scope.split(":")
                if parts[0] == "Actions.Results" and len(parts) == 3:
                    return parts[1], parts[2]
            raise ValueError("no Actions.Results scope")
        except (ValueError, TypeError, AttributeError) as exc:
            raise TwirpError("unauthenticated", f"invalid ACTIONS_RUNTIME_TOKEN: {exc}") from None

    # -- counters and faults ---------------------------------------------------------------------
    @property
    def calls(self) -> dict[str, int]:
        """Twirp calls received, by method name (faulted ones included); a snapshot."""
        with self._lock:
            return dict(self._calls)

    @property
    def blob_calls(self) -> dict[str, int]:
        """Blob requests by operation (PutBlock, PutBlockList, PutBlob, GetBlob, ...)."""
        with self._lock:
            return dict(self._blob_calls)

    @property
    def call_log(self) -> list[tuple[str, str, str | None]]:
        """Authenticated Twirp calls in order: (method, job id, artifact name or name filter)."""
        with self._lock:
            return list(self._call_log)

    def reset_calls(self) -> None:
        """Zero both counters and the call log."""
        with self._lock:
            self._calls.clear()
            self._blob_calls.clear()
            self._call_log.clear()

    @property
    def faults(self) -> Faults:
        """The fault settings; assigning new ones reseeds the generator with their ``seed``."""
        return self._faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        with self._lock:
            self._faults, self._rng = value, random.Random(value.seed)

    def _draw_fault(self, method: str | None) -> str | None:
        faults = self._faults
        if method is None and not faults.blobs:
            return None
        if faults.latency > 0:
            time.sleep(faults.latency)
        if method is not None and faults.methods is not None and method not in faults.methods:
            return None
        with self._lock:
            if faults.rate <= 0 or self._rng.random() >= faults.rate:
                return None
            return self._rng.choice(sorted(faults.kinds))

    # -- signed URLs -----------------------------------------------------------------------------
    def _sign(self, key: str, perm: str, expiry: int) -> str:
        msg = f"{perm}\n{expiry}\n{key}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def _signed_url(self, key: str, perm: str) -> str:
        expiry = int(time.time() + self.url_ttl)
        sig = self._sign(key, perm, expiry)
        query = f"sv={STORAGE_VERSION}&sr=b&sp={perm}&se={expiry}&sig={sig}"
        return f"{self.url}blob/{quote(key)}?{query}"

    def _check_signature(self, key: str, query: dict[str, list[str]], need: str) -> None:
        perm, expiry, sig = (query.get(k, [""])[0] for k in ("sp", "se", "sig"))
        try:
            good = hmac.compare_digest(sig, self._sign(key, perm, int(expiry)))
        except (ValueError, TypeError):
            good = False
        if not good:
            raise BlobError(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the "
                "request. Make sure the value of the signature is formed correctly.",
            )
        if int(expiry) < time.time():
            raise BlobError(403, "AuthenticationFailed", "Signed expiry time has passed.")
        if need not in perm:
            raise BlobError(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )

    @property
    def _store(self) -> _BlobStore:
        if self._blobs is None:
            raise RuntimeError("the emulator is not started")
        return self._blobs

    # -- artifact service ------------------------------------------------------------------------
    def _ids(self, who: tuple[str, str], req: _Req, same_job: bool) -> tuple[str, str]:
        run = req.text("workflow_run_backend_id")
        job = req.text("workflow_job_run_backend_id")
        if run != who[0] or (same_job and job != who[1]):
            raise TwirpError(
                "permission_denied", "the backend ids do not match the ACTIONS_RUNTIME_TOKEN"
            )
        return run, job

    def _create_artifact(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
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

    def _finalize_artifact(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
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

    def _list_artifacts(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
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

    def _signed_artifact_url(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        with self._lock:
            art = self._find_artifact(run, job, req.text("name"), finalized=True)
        return {"signed_url": self._signed_url(art.blob, "r")}

    def _delete_artifact(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        with self._lock:
            art = self._find_artifact(run, job, req.text("name"), finalized=False)
            del self._artifacts[run][art.name]
        self._store.delete(art.blob)
        return {"ok": True, "artifact_id": str(art.id)}

    # -- cache service ---------------------------------------------------------------------------
    def _create_cache_entry(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
        key, version = req.text("key"), req.text("version")
        if len(key) > 512 or "," in key:
            raise TwirpError("invalid_argument", "key must be at most 512 characters, no commas")
        with self._lock:
            if (key, version) in self._caches:
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
            )
            self._store.create(entry.blob, "application/octet-stream")
            self._caches[(key, version)] = entry
        return {"ok": True, "signed_upload_url": self._signed_url(entry.blob, "cw")}

    def _finalize_cache_entry(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
        key, version, size = req.text("key"), req.text("version"), req.integer("size_bytes") or 0
        with self._lock:
            entry = self._caches.get((key, version))
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

    def _cache_download_url(self, who: tuple[str, str], req: _Req) -> dict[str, Any]:
        key, version, restore = req.text("key"), req.text("version"), req.texts("restore_keys")
        with self._lock:
            saved = sorted(
                (e for e in self._caches.values() if e.finalized and e.version == version),
                key=lambda e: (e.created, e.id),
                reverse=True,
            )
        for wanted in [key, *restore]:
            hit = next((e for e in saved if e.key == wanted), None) or next(
                (e for e in saved if e.key.startswith(wanted)), None
            )
            if hit is not None:
                return {
                    "ok": True,
                    "signed_download_url": self._signed_url(hit.blob, "r"),
                    "matched_key": hit.key,
                }
        return {"ok": False, "signed_download_url": "", "matched_key": ""}

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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    emulator: GitHubEmulator
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: Twirp under /twirp/, blobs under /blob/."""

    protocol_version = "HTTP/1.1"
    _consumed = True
    server_version = "ciflow-github-emulator"
    timeout = 120
    # headers and body go out in separate writes: without TCP_NODELAY every answer would wait
    # for the client's delayed ACK (~40 ms a call)
    disable_nagle_algorithm = True

    @property
    def emu(self) -> GitHubEmulator:
        return cast(_Server, self.server).emulator

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator does not log each request."""

    # -- request bodies --------------------------------------------------------------------------
    def _body(self) -> Iterator[bytes]:
        """The request body in chunks (Content-Length or chunked transfer encoding)."""
        self._consumed = False
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                yield from self._read_exact(size)
                self.rfile.readline(16)
            while self.rfile.readline(1024).strip():
                pass
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))
        self._consumed = True

    def _read_exact(self, size: int) -> Iterator[bytes]:
        while size > 0:
            data = self.rfile.read(min(_CHUNK, size))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            size -= len(data)
            yield data

    def _read_small(self, limit: int) -> bytes:
        data = bytearray()
        for chunk in self._body():
            data += chunk
            if len(data) > limit:
                self.close_connection = True
                raise TwirpError("malformed", "request body too large")
        return bytes(data)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes = b"", head_only: bool = False
    ) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- Twirp -----------------------------------------------------------------------------------
    def do_POST(self) -> None:
        """A Twirp call."""
        parts = urlsplit(self.path).path.split("/")
        route = (parts[2], parts[3]) if len(parts) == 4 and parts[1] == "twirp" else ("", "")
        try:
            body = self._read_small(_MAX_RPC_BODY)
            if route not in self.emu._rpcs:
                raise TwirpError("bad_route", f"no handler for POST {urlsplit(self.path).path}")
        except TwirpError as err:
            return self._twirp_error(err)
        except ConnectionError:
            return self._drop()
        with self.emu._lock:
            self.emu._calls[route[1]] += 1
        fault = self.emu._draw_fault(route[1])
        if fault == "drop":
            return self._drop()
        if fault in ("429", "500", "503"):
            code = {"429": "resource_exhausted", "500": "internal", "503": "unavailable"}[fault]
            return self._twirp_error(TwirpError(code, f"injected fault {fault}"))
        try:
            result: dict[str, Any] | TwirpError = self.emu._rpc(
                *route,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type", ""),
                body,
            )
        except TwirpError as err:
            result = err
        if fault == "drop_after":
            self._drop()
        elif isinstance(result, TwirpError):
            self._twirp_error(result)
        else:
            self._send(200, {"Content-Type": "application/json"}, json.dumps(result).encode())

    def _twirp_error(self, err: TwirpError) -> None:
        headers = {"Content-Type": "application/json"}
        if err.status == 429:
            headers["Retry-After"] = str(self.emu.faults.retry_after)
        self._send(err.status, headers, json.dumps({"code": err.code, "msg": err.msg}).encode())

    # -- blobs -----------------------------------------------------------------------------------
    def do_PUT(self) -> None:
        """Put Block, Put Block List or Put Blob."""
        self._blob("PUT")

    def do_GET(self) -> None:
        """Get Blob (whole or a range), or the REST jobs API under ``/repos/``."""
        url = urlsplit(self.path)
        if url.path.startswith("/repos/"):
            fault = self.emu._draw_fault("ListJobsForWorkflowRunAttempt")
            if fault in ("drop", "drop_after"):
                return self._drop()
            if fault is not None:
                status, body = int(fault), {"message": f"injected fault {fault}"}
                headers = {"Content-Type": "application/json"}
                if fault == "429":
                    headers["Retry-After"] = str(self.emu.faults.retry_after)
                return self._send(status, headers, json.dumps(body).encode())
            status, body = self.emu._list_jobs(
                url.path, parse_qs(url.query), self.headers.get("Authorization")
            )
            data = json.dumps(body).encode()
            return self._send(status, {"Content-Type": "application/json"}, data)
        self._blob("GET")

    def do_HEAD(self) -> None:
        """Get Blob Properties."""
        self._blob("HEAD")

    def _blob(self, verb: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        comp = query.get("comp", [""])[0].lower()
        op = {"GET": "GetBlob", "HEAD": "GetBlobProperties"}.get(
            verb, {"block": "PutBlock", "blocklist": "PutBlockList"}.get(comp, "PutBlob")
        )
        self._consumed = verb != "PUT"
        try:
            if not url.path.startswith("/blob/"):
                raise BlobError(404, "ResourceNotFound", "The specified resource does not exist.")
            key = unquote(url.path[len("/blob/") :])
            with self.emu._lock:
                self.emu._blob_calls[op] += 1
            fault = self.emu._draw_fault(None)
            if fault in ("drop", "drop_after"):
                return self._drop()
            if fault is not None:
                status = int(fault)
                raise BlobError(
                    status,
                    "ServerBusy" if status != 500 else "InternalError",
                    f"injected fault {fault}",
                )
            self.emu._check_signature(key, query, "w" if verb == "PUT" else "r")
            if comp not in ("", "block", "blocklist") or (comp and verb != "PUT"):
                raise BlobError(400, "InvalidQueryParameterValue", f"comp={comp} is not supported.")
            if verb == "PUT":
                return self._put(key, comp, query)
            return self._get(key, head_only=verb == "HEAD")
        except BlobError as err:
            if not self._consumed:
                for _ in self._body():
                    pass
            self._blob_error(err, head_only=verb == "HEAD")
        except (ConnectionError, ValueError):
            self._drop()

    def _common(self) -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-version": STORAGE_VERSION,
            "Date": formatdate(usegmt=True),
        }

    def _blob_error(self, err: BlobError, head_only: bool) -> None:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{err.code}</Code>'
            f"<Message>{err.msg}</Message></Error>"
        ).encode()
        headers = {**self._common(), "x-ms-error-code": err.code, "Content-Type": "application/xml"}
        self._send(err.status, headers, body, head_only=head_only)

    def _receive(self) -> Path:
        tmp = self.emu._store.temp_path()
        try:
            with open(tmp, "wb") as out:
                for chunk in self._body():
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _put(self, key: str, comp: str, query: dict[str, list[str]]) -> None:
        store = self.emu._store
        content_type = self.headers.get("x-ms-blob-content-type")
        headers = {**self._common(), "x-ms-request-server-encrypted": "true"}
        if comp == "block":
            block_id = query.get("blockid", [""])[0]
            try:
                if not base64.b64decode(block_id, validate=True):
                    raise ValueError(block_id)
            except ValueError:
                raise BlobError(
                    400,
                    "InvalidQueryParameterValue",
                    "Value for one of the query parameters specified in the request "
                    "URI is invalid (blockid).",
                ) from None
            tmp = self._receive()
            try:
                store.stage(key, block_id, tmp)
            except BlobError:
                tmp.unlink(missing_ok=True)
                raise
            return self._send(201, headers)
        if comp == "blocklist":
            try:
                root = ET.fromstring(self._read_small(_MAX_RPC_BODY))
            except (ET.ParseError, TwirpError):
                raise BlobError(
                    400, "InvalidXmlDocument", "XML specified is not syntactically valid."
                ) from None
            entries = [
                (child.tag, (child.text or "").strip())
                for child in root
                if child.tag in ("Latest", "Committed", "Uncommitted")
            ]
            blob = store.commit(key, entries, content_type)
        else:
            blob_type = self.headers.get("x-ms-blob-type")
            if blob_type != "BlockBlob":
                code = "MissingRequiredHeader" if blob_type is None else "InvalidHeaderValue"
                raise BlobError(400, code, "x-ms-blob-type must be BlockBlob.")
            tmp = self._receive()
            try:
                blob = store.put(key, tmp, content_type or self.headers.get("Content-Type"))
            except BlobError:
                tmp.unlink(missing_ok=True)
                raise
        headers.update({"ETag": blob.etag, "Last-Modified": formatdate(blob.modified, usegmt=True)})
        self._send(201, headers)

    def _get(self, key: str, head_only: bool) -> None:
        blob = self.emu._store.get(key)
        with blob.lock:
            if blob.path is None:
                raise BlobError(404, "BlobNotFound", "The specified blob does not exist.")
            src = open(blob.path, "rb")
            size, etag, modified = blob.size, blob.etag, blob.modified
        try:
            headers = {
                **self._common(),
                "Content-Type": blob.content_type,
                "ETag": etag,
                "Last-Modified": formatdate(modified, usegmt=True),
                "Accept-Ranges": "bytes",
                "x-ms-blob-type": "BlockBlob",
                "x-ms-creation-time": formatdate(blob.created, usegmt=True),
                "x-ms-lease-status": "unlocked",
                "x-ms-lease-state": "available",
                "x-ms-server-encrypted": "true",
            }
            if blob.filename:
                headers["Content-Disposition"] = (
                    f'attachment; filename="{blob.filename.encode("ascii", "replace").decode()}'
                    f"\"; filename*=UTF-8''{quote(blob.filename)}"
                )
            start, end, status = 0, size - 1, 200
            spec = self.headers.get("x-ms-range") or self.headers.get("Range")
            if spec:
                match = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", spec)
                if match is None or int(match[1]) >= size:
                    raise BlobError(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    )
                start, status = int(match[1]), 206
                end = min(int(match[2]), size - 1) if match[2] else size - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(end - start + 1)
            self._send(status, headers, head_only=True)
            if not head_only:
                src.seek(start)
                _copy(src, self.wfile, end - start + 1)
        finally:
            src.close()


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator until Ctrl-C, printing ``export`` lines for a job's environment."""
    parser = argparse.ArgumentParser(
        prog="ciflow emulate-github",
        description="Emulate GitHub Actions' artifact (v4) and cache (v2) services locally.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--run-id", default="local-run")
    parser.add_argument(
        "--job-id",
        action="append",
        default=None,
        help="job id (repeatable: tokens for more jobs are printed as comments)",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument(
        "--fault-kinds",
        default="503",
        help=f"comma-separated subset of {','.join(sorted(FAULT_KINDS))}",
    )
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--fault-blobs", action="store_true", help="faults hit blob requests too")
    parser.add_argument("--retry-after", type=int, default=1)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    jobs = args.job_id or ["local-job"]
    try:
        faults = Faults(
            rate=args.fault_rate,
            latency=args.latency,
            seed=args.fault_seed,
            kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()],
            retry_after=args.retry_after,
            blobs=args.fault_blobs,
        )
        emulator = GitHubEmulator(args.host, args.port, data_dir=args.data_dir)
        emulator.faults = faults
        emulator.start()
        for name, value in emulator.env(args.run_id, jobs[0]).items():
            print(f"export {name}={shlex.quote(value)}")
        for job in jobs[1:]:
            other = emulator.env(args.run_id, job)
            print(
                f"# job {job}: export ACTIONS_RUNTIME_TOKEN="
                f"{shlex.quote(other['ACTIONS_RUNTIME_TOKEN'])} "
                f"CIFLOW_JOB_ID={other['CIFLOW_JOB_ID']} GITHUB_JOB={shlex.quote(job)}"
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# serving {emulator.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
