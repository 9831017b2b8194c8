"""The emulator itself: its state, runs and jobs, tokens, signed URLs, start and stop."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from . import rest
from .http import _Handler, _Server, _Server6
from .model import (
    ARTIFACT_SERVICE,
    CACHE_SERVICE,
    REPOSITORY,
    STORAGE_VERSION,
    BlobError,
    Faults,
    TwirpError,
    _Artifact,
    _b64url,
    _BlobStore,
    _CacheEntry,
    _check_id,
    _Req,
    _rfc3339,
    _unb64url,
    _Who,
    access_claim,
    backend_run,
    parse_access,
    ref_env,
)
from .twirp import TwirpMethods


class GitHubEmulator(TwirpMethods):
    """Artifact v4 + cache v2 services on ``host:port``; one artifact namespace per workflow run.

    Use as a context manager or call ``start()``/``stop()``; give a job's ``env(run, job)`` to the
    process under test. ``calls`` counts Twirp calls by method, ``blob_calls`` blob requests by
    operation; ``faults`` injects errors and latency.

    Cache entries are scoped by ref as on GitHub: the runtime token's ``ac`` claim (built by
    `token` from ``ref``, ``base_ref`` and ``default_branch``) lists the refs a job may read and
    the one it writes. With ``require_restore_keys`` a lookup without ``restore_keys`` misses
    even an exact key (off by default: see docs/architecture.md, the github-cache store).

    What GitHub's artifact service does is not documented everywhere; each such behaviour is
    an attribute, set before or while serving (docs/architecture.md, "The github store and
    GitHub's artifact service"): ``unfinalized_reserves_name`` (True: an artifact not yet
    finalized holds its name, CreateArtifact of it answers 409), ``unfinalized_deletable``
    (DeleteArtifact removes one), ``unfinalized_listed`` (ListArtifacts shows them, size 0),
    ``list_limit`` (an unfiltered ListArtifacts answers only the newest N), and
    ``artifacts_across_attempts`` (a job of attempt 2 also lists, reads and collides with the
    artifacts of attempt 1). ``artifact_limit`` counts CreateArtifact successes per job and run
    attempt, deleted artifacts included; ``storage_quota_hit`` answers every CreateArtifact with
    the quota error. Artifacts expire at their ``expires_at`` (1 to 90 days ahead, else refused;
    90 days when not sent); `advance` moves the emulator's clock for that.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        data_dir: Path | None = None,
        default_branch: str = "main",
    ) -> None:
        self.host, self.port = host, port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        #: the repository's default branch: every job may read its cache entries
        self.default_branch = _check_id(default_branch, "default_branch")
        #: True: GetCacheEntryDownloadURL without restore_keys is a miss, exact key or not
        self.require_restore_keys = False
        self.default_behaviours()
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
        self._artifacts: dict[str, list[_Artifact]] = {}
        self._created: Counter[tuple[str, str]] = Counter()
        self._caches: dict[tuple[str, str, str], _CacheEntry] = {}  # (scope, key, version)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._blobs: _BlobStore | None = None
        self._rpcs: dict[tuple[str, str], Callable[[_Who, _Req], dict[str, Any]]] = {
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
                self._created.clear()
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
    def token(
        self,
        run_id: str,
        job_id: str,
        *,
        ref: str | None = None,
        base_ref: str | None = None,
        attempt: int = 1,
    ) -> str:
        """An HS256 JWT like the runner's, ``scp`` carrying ``Actions.Results:<run>:<job>``.

        Its ``ac`` claim gives the job's cache scopes: ``ref`` (a branch name or a full ref,
        default the default branch) read/write, then read-only ``base_ref`` (a pull request's
        base branch) and the default branch. The run's backend id names the attempt
        (`backend_run`): each attempt of a workflow run has its own artifacts.
        """
        run = backend_run(_check_id(run_id, "run_id"), attempt)
        job = _check_id(job_id, "job_id")
        now = int(time.time())
        claims = {
            "scp": f"Actions.GenericRead:00000000-0000-0000-0000-000000000000 "
            f"Actions.UploadArtifacts:{run}:{job} Actions.Results:{run}:{job}",
            "ac": access_claim(ref or self.default_branch, base_ref, self.default_branch),
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

    def env(
        self,
        run_id: str,
        job_id: str,
        *,
        ref: str | None = None,
        base_ref: str | None = None,
        attempt: int = 1,
    ) -> dict[str, str]:
        """The variables a runner gives a JavaScript action for these services (one job).

        The job starts (``in_progress`` in the jobs API) on the first call for it. Besides the
        runtime variables: ``GITHUB_API_URL``/``GITHUB_REPOSITORY``/``GITHUB_TOKEN`` for the
        REST jobs API, and ``CIFLOW_JOB_ID``, what the reusable action exports from
        ``job.check_run_id``. ``ref`` and ``base_ref`` go into the token (see `token`) and,
        when given, into ``GITHUB_REF``/``GITHUB_REF_NAME`` and ``GITHUB_BASE_REF``. ``attempt``
        is ``GITHUB_RUN_ATTEMPT``: a job of "Re-run failed jobs" is the same job id in attempt 2.
        """
        job = self._start_job(run_id, job_id, attempt)
        return {
            **ref_env(ref, base_ref),
            "GITHUB_API_URL": self.url,
            "GITHUB_REPOSITORY": REPOSITORY,
            "GITHUB_TOKEN": self._rest_token(run_id),
            "CIFLOW_JOB_ID": str(job["id"]),
            "RUNNER_NAME": str(job["runner_name"]),
            "ACTIONS_RESULTS_URL": self.url,
            "ACTIONS_RUNTIME_URL": self.url,
            "ACTIONS_CACHE_URL": self.url,
            "ACTIONS_RUNTIME_TOKEN": self.token(
                run_id, job_id, ref=ref, base_ref=base_ref, attempt=attempt
            ),
            "ACTIONS_CACHE_SERVICE_V2": "True",
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_ACTIONS": "true",
            "GITHUB_RUN_ID": run_id,
            "GITHUB_RUN_ATTEMPT": str(attempt),
            "GITHUB_JOB": job_id,
        }

    # -- the REST jobs API ----------------------------------------------------------------------
    #: the repository's primary REST limit, requests an hour (GITHUB_TOKEN's: 1,000)
    rest_limit: int = rest.REST_LIMIT
    #: requests the repository spent this hour; set it to model its other workflows' use
    rest_used: int = 0
    #: seconds: every REST request gets a secondary-limit 429 with this ``retry-after`` (None: off)
    rest_secondary: int | None = None
    _rest_reset: float | None = None  # epoch seconds when the repository's hour ends

    def _rest_token(self, run_id: str) -> str:
        with self._lock:
            for token, run in self._rest_tokens.items():
                if run == run_id:
                    return token
            token = "ghs_" + secrets.token_hex(18)
            self._rest_tokens[token] = run_id
            return token

    def _start_job(self, run_id: str, job_id: str, attempt: int = 1) -> dict[str, Any]:
        """The jobs API record of a job in one attempt (a re-run job gets a new id)."""
        with self._lock:
            jobs = self._jobs.setdefault(run_id, {})
            name = job_id if attempt == 1 else f"{job_id}#{attempt}"
            if name not in jobs:
                number = next(self._job_numbers)
                jobs[name] = {
                    "id": number,
                    "run_id": run_id,
                    "run_attempt": attempt,
                    "name": job_id,
                    "status": "in_progress",
                    "conclusion": None,
                    "started_at": _rfc3339(time.time()),
                    "completed_at": None,
                    "runner_name": f"GitHub Actions {number % 1000}",
                }
            return jobs[name]

    def finish_job(
        self, run_id: str, job_id: str, conclusion: str = "failure", attempt: int = 1
    ) -> None:
        """Mark a job ``completed`` in the jobs API, as GitHub does when its runner ends it."""
        job = self._start_job(run_id, job_id, attempt)
        with self._lock:
            job.update(
                status="completed", conclusion=conclusion, completed_at=_rfc3339(time.time())
            )

    @property
    def rest_calls(self) -> int:
        """REST (jobs API) requests received, refused ones included."""
        with self._lock:
            return self._rest_calls

    def _rest_spend(self, spend: bool) -> tuple[bool, dict[str, str]]:
        """Count one request against the repository's hour (``spend``): (within the primary
        limit, the ``x-ratelimit-*`` headers to send). The hour starts at its first request."""
        now = time.time()
        with self._lock:
            if self._rest_reset is None or now >= self._rest_reset:
                if self._rest_reset is not None:
                    self.rest_used = 0
                self._rest_reset = now + rest.HOUR
            within = self.rest_used < self.rest_limit
            if spend and within:
                self.rest_used += 1
            return within, rest.rate_headers(self.rest_limit, self.rest_used, self._rest_reset)

    def _list_jobs(
        self, path: str, query: dict[str, list[str]], auth: str | None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """GET /repos/{owner}/{repo}/actions/runs/{run}[/attempts/{n}]/jobs: (status, body,
        headers). An authenticated request counts against the repository's rate limit."""
        with self._lock:
            self._rest_calls += 1
        parts = path.strip("/").split("/")[1:]  # owner, repo, "actions", "runs", run, ...
        shape = len(parts) in (6, 8) and parts[2:4] == ["actions", "runs"] and parts[-1] == "jobs"
        scheme, _, token = (auth or "").partition(" ")
        with self._lock:
            bearer = scheme.lower() in ("bearer", "token")
            run = self._rest_tokens.get(token.strip()) if bearer else None
        within, headers = self._rest_spend(run is not None and self.rest_secondary is None)
        if run is None:
            return 401, {"message": "Bad credentials"}, headers
        if self.rest_secondary is not None:
            status, body = rest.secondary_limit()
            return status, body, {**headers, "retry-after": str(self.rest_secondary)}
        if not within:
            return (*rest.primary_limit(), headers)
        if not shape or (len(parts) == 8 and parts[5] != "attempts"):
            return 404, {"message": "Not Found"}, headers
        with self._lock:
            if not self.jobs_api:
                return 403, {"message": "Resource not accessible by integration"}, headers
            if "/".join(parts[:2]) != REPOSITORY or parts[4] != run:
                return 404, {"message": "Not Found"}, headers
            jobs = [dict(j) for j in self._jobs.get(run, {}).values()]
        attempt = parts[6] if len(parts) == 8 else None
        return (*rest.list_jobs(jobs, attempt, query), headers)

    def _identity(self, authorization: str | None) -> _Who:
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
                    return _Who(parts[1], parts[2], parse_access(claims.get("ac")))
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

    def cache_keys(self) -> list[str]:
        """The keys of the finalized cache entries, in every scope (sorted, no duplicates)."""
        with self._lock:
            return sorted({key for (_, key, _), e in self._caches.items() if e.finalized})

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
