"""The GitHub Actions artifact store, ``github://``: one artifact (v4) per key in the current run.

URL forms: ``github://`` (artifact names ``ciflow~…``) or ``github://NS`` with a namespace
``NS`` of ``[a-z0-9][a-z0-9._-]{0,31}`` (names ``ciflow-NS~…``) for two stores in one run.

Configuration comes from the runner: ``ACTIONS_RESULTS_URL`` and ``ACTIONS_RUNTIME_TOKEN``. GitHub
gives them to JavaScript actions only, so ciflow's ``action.yml`` exports them for its Python step.
The run and job backend ids come from the token's ``scp`` claim
(``Actions.Results:<runBackendId>:<jobBackendId>``); the token is decoded, never verified.

Protocol (the Twirp JSON service of ``@actions/artifact``): ``POST {origin}/twirp/
github.actions.results.api.v1.ArtifactService/{Method}`` with a bearer token and snake_case
bodies; answers are read in snake_case or camelCase. Blobs go to the signed Azure URL: one
``PUT`` with ``x-ms-blob-type: BlockBlob`` up to `SINGLE_PUT_MAX`, else ``comp=block`` blocks of
`BLOCK_SIZE` and one ``comp=blocklist``.

Key encoding (`artifact_name`, `key_from_name`): ``/`` becomes ``~`` and an uppercase letter
``X`` becomes ``^x``; keys never hold ``~`` or ``^``, so the mapping is reversible, and names are
lowercase, so they stay distinct even where names compare case-insensitively. Names may not
exceed `NAME_MAX` (256) characters: ``github://`` leaves 249 for the encoded key.

Value format: a ZIP archive (stored, not deflated) with one member named ``data``, like
``actions/upload-artifact`` uploads, so the GitHub UI and ``actions/download-artifact`` show the
value. Reading streams the archive and accepts stored or deflated members.

Atomic create: CreateArtifact answers 409 for a name that exists in the run. Whether an
unfinalized artifact already reserves its name is not confirmed, so the winner is decided by
reading back: after FinalizeArtifact, list the artifacts of that name; the winner is the entry
with the lowest ``database_id`` (then ``created_at``). Only FinalizeArtifact returns an artifact
id, so ids are taken to be given at finalization: the lowest id is the earliest finalized entry,
and every racer that reads back after its own finalization sees it. A loser deletes its entry
when that cannot hit another one (the winner belongs to another job); readers always use the
winner, and `GitHubArtifactStore.delete` removes the winner.

API calls (``self.stats`` counts each HTTP attempt by RPC name, ``blob-upload`` and
``blob-download``, next to the operation names): create = CreateArtifact + upload (1 PUT, or
blocks + 1 block list) + FinalizeArtifact + ListArtifacts; create of an existing key = 1;
get = ListArtifacts + GetSignedArtifactURL + download (1 if absent); list = 1 ListArtifacts for
every job of the run; delete = ListArtifacts + DeleteArtifact (1 if absent).

Retries: HTTP 408, 429, 5xx (and 403 with ``Retry-After``), connection errors, timeouts and
bodies that are not JSON are retried up to `MAX_ATTEMPTS` times with capped exponential backoff
and jitter (`BACKOFF_BASE` doubling to `BACKOFF_CAP`, times 0.5-1), or as long as
``Retry-After`` says (seconds or an HTTP date, at most `RETRY_AFTER_MAX`); ``stats`` counts them
as ``retries``. Other errors raise `StoreError` naming the RPC, HTTP status and Twirp code and
message; 401 and 403 raise `TwirpAuthError`, a `StoreUnavailable`.

Lost answers: when a retried CreateArtifact gets 409 after an attempt whose answer was lost, the
name may be held by our own unfinalized artifact; if no finalized entry exists, the store deletes
its job's artifact of that name and creates again (a 409 without a lost answer is just False). A
retried FinalizeArtifact that fails is settled by the read-back. Creates of one name by one job
are serialised within a process, so "our entry" is the one of our job. The rule assumes the
listing shows every finalized artifact (a missing own entry is listed again after short pauses).

Limits: GitHub keeps at most 500 artifacts per job; a writer that dies between CreateArtifact and
FinalizeArtifact may leave its name blocked for the run if GitHub reserves names at creation
(create then answers False and get None).
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import email.utils
import hashlib
import io
import json
import os
import random
import re
import secrets
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from xml.sax.saxutils import escape

import requests

from .._version import __version__
from ..errors import UsageError
from .base import Store, StoreError, StoreUnavailable, check_key

__all__ = [
    "GitHubArtifactStore",
    "GitHubHttp",
    "TwirpAuthError",
    "TwirpError",
    "artifact_name",
    "key_from_name",
    "runtime_from_env",
]

T = TypeVar("T")

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
#: the artifact version the v4 toolkit creates (a zip archive)
ARTIFACT_VERSION = 4
#: GitHub's limit on artifact names ("must be between 1 and 256 characters")
NAME_MAX = 256
#: block size of streamed uploads; a single PUT is used up to this size
BLOCK_SIZE = 4 << 20
SINGLE_PUT_MAX = BLOCK_SIZE
#: bytes read or written at a time when streaming
CHUNK = 1 << 20
#: attempts per HTTP call (first try included), and the backoff between them (seconds)
MAX_ATTEMPTS = 6
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
#: the longest ``Retry-After`` waited for; a longer one fails the call at once
RETRY_AFTER_MAX = 300.0
#: pauses before listing again when the read-back after FinalizeArtifact misses our artifact
READ_BACK_PAUSES = (0.2, 0.5, 1.0)
#: (connect, read) timeouts of Twirp calls and of blob transfers, seconds
RPC_TIMEOUT = (10.0, 60.0)
BLOB_TIMEOUT = (10.0, 300.0)
#: Azure storage API version sent with blob requests
AZURE_VERSION = "2021-08-06"

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Twirp codes that are worth another attempt whatever the HTTP status says
RETRY_CODES = frozenset({"unavailable", "resource_exhausted", "aborted", "deadline_exceeded"})

_NS = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_KEY_CHAR = re.compile(r"[a-z0-9._=@+-]")


# -- runtime configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """What a runner step needs to call the results service."""

    origin: str
    token: str
    run_id: str
    job_id: str


def runtime_from_env(env: Mapping[str, str], scheme: str) -> Runtime:
    """Read ``ACTIONS_RESULTS_URL`` and ``ACTIONS_RUNTIME_TOKEN`` and the ids in the token."""
    url = env.get("ACTIONS_RESULTS_URL", "").strip()
    token = env.get("ACTIONS_RUNTIME_TOKEN", "").strip()
    missing = [
        n for n, v in (("ACTIONS_RESULTS_URL", url), ("ACTIONS_RUNTIME_TOKEN", token)) if not v
    ]
    if missing:
        raise StoreUnavailable(
            f"{scheme}:// store: {' and '.join(missing)} not set; GitHub gives these only to "
            "JavaScript actions, so run ciflow through its action.yml, which exports them"
        )
    match = re.match(r"(https?://[^/?#]+)", url)
    if not match:
        raise StoreUnavailable(f"{scheme}:// store: ACTIONS_RESULTS_URL is not an http(s) URL")
    run_id, job_id = backend_ids(token)
    return Runtime(match.group(1), token, run_id, job_id)


def backend_ids(token: str) -> tuple[str, str]:
    """The run and job backend ids in the ``scp`` claim of a runtime token (not verified)."""
    bad = "ACTIONS_RUNTIME_TOKEN is not a valid Actions runtime token"
    parts = token.split(".")
    if len(parts) != 3:
        raise StoreUnavailable(f"{bad} (not a JWT)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise StoreUnavailable(f"{bad} (unreadable payload)") from exc
    scp = claims.get("scp") if isinstance(claims, dict) else None
    if not isinstance(scp, str):
        raise StoreUnavailable(f"{bad} (no scp claim)")
    for scope in scp.split():
        fields = scope.split(":")
        if fields[0] != "Actions.Results":
            continue
        if len(fields) != 3 or not fields[1] or not fields[2]:
            raise StoreUnavailable(f"{bad} (malformed Actions.Results scope)")
        return fields[1], fields[2]
    raise StoreUnavailable(f"{bad} (no Actions.Results scope in scp)")


def parse_namespace(url: str, scheme: str) -> str:
    """The namespace of ``scheme://[NS]`` ('' if none); `UsageError` for anything else."""
    head, sep, rest = url.partition("://")
    if head != scheme or not sep:
        raise UsageError(f"not a {scheme}:// URL: {url!r}")
    ns = rest.rstrip("/")
    if ns and not _NS.fullmatch(ns):
        raise UsageError(
            f"invalid store URL {url!r}: use {scheme}:// or {scheme}://NAMESPACE with "
            "[a-z0-9][a-z0-9._-] (at most 32 characters)"
        )
    return ns


# -- key encoding ---------------------------------------------------------------------------------


def name_prefix(namespace: str = "") -> str:
    """The artifact name prefix of a store namespace."""
    return f"ciflow-{namespace}~" if namespace else "ciflow~"


def artifact_name(key: str, prefix: str = "ciflow~") -> str:
    """The artifact name of ``key``: ``/`` -> ``~``, ``X`` -> ``^x``; `UsageError` if too long."""
    check_key(key)
    name = prefix + "".join(
        "~" if c == "/" else f"^{c.lower()}" if "A" <= c <= "Z" else c for c in key
    )
    if len(name) > NAME_MAX:
        raise UsageError(
            f"store key too long for the github store: {key[:60]!r}… gives a {len(name)}-character "
            f"artifact name; GitHub allows {NAME_MAX} (uppercase letters count twice)"
        )
    return name


def key_from_name(name: str, prefix: str = "ciflow~") -> str | None:
    """The key of an artifact name made by `artifact_name`, or None for any other name."""
    if not name.startswith(prefix):
        return None
    out: list[str] = []
    chars = iter(name[len(prefix) :])
    for c in chars:
        if c == "~":
            out.append("/")
        elif c == "^":
            nxt = next(chars, "")
            if not ("a" <= nxt <= "z"):
                return None
            out.append(nxt.upper())
        elif _KEY_CHAR.fullmatch(c):
            out.append(c)
        else:
            return None
    key = "".join(out)
    try:
        check_key(key)
    except UsageError:
        return None
    return key


# -- HTTP: Twirp calls and blobs, with retries -------------------------------------------------


class TwirpError(StoreError):
    """A Twirp call failed for good; ``ambiguous`` if an earlier attempt may have taken effect."""

    def __init__(
        self, label: str, rpc: str, status: int, code: str, msg: str, ambiguous: bool
    ) -> None:
        what = f"{code}: {msg}" if msg else code or "no Twirp error body"
        super().__init__(f"{label}: {rpc} failed with HTTP {status} ({what})")
        self.label, self.rpc, self.status, self.code, self.msg = label, rpc, status, code, msg
        self.ambiguous = ambiguous

    @property
    def exists(self) -> bool:
        """The error says the name or key exists already."""
        return (
            self.code == "already_exists"
            or (self.status == 409 and self.code in ("", "unknown"))
            or "already exists" in self.msg.lower()
        )

    @property
    def not_found(self) -> bool:
        return self.code == "not_found" or (self.status == 404 and self.code in ("", "bad_route"))


class TwirpAuthError(TwirpError, StoreUnavailable):
    """HTTP 401 or 403: the token may not do this (wrong scope, read-only, expired)."""


class _Retry(Exception):
    """One attempt failed in a way worth retrying."""

    def __init__(self, why: str, retry_after: float | None = None, ambiguous: bool = True) -> None:
        super().__init__(why)
        self.why, self.retry_after, self.ambiguous = why, retry_after, ambiguous


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, shortened."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def get_field(obj: Mapping[str, Any], snake: str) -> Any:
    """A response field by its snake_case name or its camelCase form."""
    if snake in obj:
        return obj[snake]
    head, *rest = snake.split("_")
    return obj.get(head + "".join(w.title() for w in rest))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class GitHubHttp:
    """Twirp JSON calls and signed-URL blob transfers with retries; counts calls in ``stats``."""

    def __init__(
        self,
        runtime: Runtime,
        service: str,
        count: Callable[[str], None],
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        session: requests.Session | None = None,
        label: str = "github",
    ) -> None:
        self.runtime, self.service, self.count = runtime, service, count
        self.sleep, self.max_attempts, self.label = sleep, max(1, max_attempts), label
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"ciflow/{__version__}"
        self._rng = random.Random()

    def close(self) -> None:
        self.session.close()

    # -- the retry loop ---------------------------------------------------------------------------

    def _retrying(self, what: str, attempt_fn: Callable[[], T]) -> tuple[T, bool]:
        """Run ``attempt_fn`` until it returns, retrying on `_Retry`; (result, ambiguous)."""
        ambiguous = False
        for attempt in range(1, self.max_attempts + 1):
            try:
                return attempt_fn(), ambiguous
            except _Retry as retry:
                ambiguous = ambiguous or retry.ambiguous
                if attempt == self.max_attempts:
                    raise StoreUnavailable(
                        f"{self.label}: {what} failed after {attempt} attempts: {retry.why}"
                    ) from None
                if retry.retry_after is not None:
                    if retry.retry_after > RETRY_AFTER_MAX:
                        raise StoreUnavailable(
                            f"{self.label}: {what} rate limited: the service asks to retry after "
                            f"{retry.retry_after:.0f} s"
                        ) from None
                    delay = retry.retry_after
                else:
                    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
                    delay *= self._rng.uniform(0.5, 1.0)
                self.count("retries")
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self, counter: str, method: str, url: str, timeout: tuple[float, float], **kw: Any
    ) -> requests.Response:
        """One HTTP attempt; connection problems become `_Retry`."""
        self.count(counter)
        try:
            return self.session.request(method, url, timeout=timeout, **kw)
        except requests.ConnectTimeout as exc:
            raise _Retry(f"connection timed out ({type(exc).__name__})", ambiguous=False) from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retry(f"connection failed ({type(exc).__name__})") from exc

    # -- Twirp ------------------------------------------------------------------------------------

    def rpc(self, method: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Call ``method``; (response, ambiguous). `TwirpError` for a definite failure."""
        url = f"{self.runtime.origin}/twirp/{self.service}/{method}"
        data = json.dumps(body).encode()  # bytes: headers and body go in one segment
        headers = {
            "Authorization": f"Bearer {self.runtime.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        ambiguous_box = [False]

        def attempt() -> dict[str, Any]:
            resp = self._send(method, "POST", url, RPC_TIMEOUT, data=data, headers=headers)
            with resp:
                status = resp.status_code
                try:
                    payload = resp.json()
                except ValueError:
                    payload = None
                if not isinstance(payload, dict):
                    raise _Retry(f"HTTP {status} with a body that is not a JSON object")
                if 200 <= status < 300:
                    return payload
                code = str(payload.get("code") or "")
                msg = one_line(str(payload.get("msg") or payload.get("message") or ""))
                after = retry_after_seconds(resp.headers.get("Retry-After"))
                limited = status == 429 or (status == 403 and after is not None)
                if status in RETRY_STATUS or code in RETRY_CODES or limited:
                    why = f"HTTP {status} ({code}: {msg})" if code else f"HTTP {status}"
                    raise _Retry(why, after, ambiguous=not limited)
                raise TwirpError(self.label, method, status, code, msg, ambiguous_box[0])

        def tracked() -> dict[str, Any]:
            try:
                return attempt()
            except _Retry as retry:
                ambiguous_box[0] = ambiguous_box[0] or retry.ambiguous
                raise

        try:
            return self._retrying(method, tracked)
        except TwirpError as exc:
            if exc.status in (401, 403) and not isinstance(exc, TwirpAuthError):
                args = (self.label, method, exc.status, exc.code, exc.msg, exc.ambiguous)
                raise TwirpAuthError(*args) from None
            raise

    # -- blobs ------------------------------------------------------------------------------------

    def _blob_error(self, what: str, resp: requests.Response) -> StoreError:
        code = resp.headers.get("x-ms-error-code", "")
        if not code:
            found = re.search(r"<Code>([^<]*)</Code>", resp.text[:2000])
            code = found.group(1) if found else ""
        return StoreError(
            f"{self.label}: {what} failed with HTTP {resp.status_code}"
            + (f" ({one_line(code)})" if code else "")
        )

    def put(self, url: str, body: bytes, headers: Mapping[str, str], what: str) -> None:
        """PUT ``body`` to a signed blob URL (retried: Azure PUTs are idempotent)."""
        hdrs = {"x-ms-version": AZURE_VERSION, **headers}

        def attempt() -> None:
            resp = self._send("blob-upload", "PUT", url, BLOB_TIMEOUT, data=body, headers=hdrs)
            with resp:
                if resp.status_code in (200, 201):
                    return
                if resp.status_code in RETRY_STATUS:
                    after = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise _Retry(f"HTTP {resp.status_code}", after)
                raise self._blob_error(what, resp)

        self._retrying(what, attempt)

    def upload(
        self,
        url: str,
        pieces: Callable[[], Iterable[bytes | memoryview]],
        total: int,
        content_type: str = "application/zip",
    ) -> str:
        """Upload the concatenated ``pieces`` (``total`` bytes) as a block blob; its sha256."""
        digest = hashlib.sha256()
        content = {"x-ms-blob-content-type": content_type}
        if total <= SINGLE_PUT_MAX:
            body = b"".join(pieces())
            if len(body) != total:
                raise StoreError(f"{self.label}: the data changed while it was uploaded")
            digest.update(body)
            self.put(url, body, {"x-ms-blob-type": "BlockBlob", **content}, "blob upload")
            return digest.hexdigest()
        sep = "&" if "?" in url else "?"
        ids: list[str] = []
        buf = bytearray()
        sent = 0

        def flush() -> None:
            nonlocal buf, sent
            block = bytes(buf)
            buf = bytearray()
            block_id = base64.b64encode(f"ciflow-{len(ids):010d}".encode()).decode()
            ids.append(block_id)
            digest.update(block)
            sent += len(block)
            quoted = urllib.parse.quote(block_id, safe="")
            self.put(f"{url}{sep}comp=block&blockid={quoted}", block, {}, "blob block upload")

        for piece in pieces():
            view = memoryview(piece)
            while view:
                take = BLOCK_SIZE - len(buf)
                buf += view[:take]
                view = view[take:]
                if len(buf) == BLOCK_SIZE:
                    flush()
        if buf:
            flush()
        if sent != total:
            raise StoreError(f"{self.label}: the data changed while it was uploaded")
        xml = '<?xml version="1.0" encoding="utf-8"?><BlockList>'
        xml += "".join(f"<Latest>{escape(i)}</Latest>" for i in ids) + "</BlockList>"
        self.put(
            f"{url}{sep}comp=blocklist",
            xml.encode(),
            {"Content-Type": "application/xml", **content},
            "blob block list",
        )
        return digest.hexdigest()

    def download(self, url: str, consume: Callable[[Iterator[bytes]], T]) -> T | None:
        """GET a signed blob URL and feed it to ``consume``; None if the blob is gone (404).

        A transfer that breaks off, or that ``consume`` finds truncated or corrupt
        (`CorruptDownload`), is retried from the start; ``consume`` must start afresh.
        """

        def attempt() -> T | None:
            resp = self._send(
                "blob-download", "GET", url, BLOB_TIMEOUT, stream=True,
                headers={"x-ms-version": AZURE_VERSION},
            )  # fmt: skip
            with resp:
                if resp.status_code == 404:
                    return None
                if resp.status_code in RETRY_STATUS:
                    after = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise _Retry(f"HTTP {resp.status_code}", after)
                if resp.status_code != 200:
                    raise self._blob_error("blob download", resp)
                try:
                    return consume(resp.iter_content(CHUNK))
                except (requests.RequestException, CorruptDownload) as exc:
                    raise _Retry(f"download broke off ({type(exc).__name__}: {exc})") from exc

        result, _ = self._retrying("blob download", attempt)
        return result


# -- the zip format of one member -----------------------------------------------------------------


class CorruptDownload(Exception):
    """A downloaded archive ended early or failed its checksum."""


def _dos_time(when: float) -> tuple[int, int]:
    t = time.gmtime(when)
    year = max(1980, t.tm_year)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), (
        ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    )


def zip_frame(size: int, crc: int, *, zip64: bool | None = None) -> tuple[bytes, bytes]:
    """Header and trailer of a stored ZIP archive whose one member ``data`` has ``size`` bytes."""
    name = b"data"
    big = size >= 0xFFFFFFFF - 256 if zip64 is None else zip64
    mtime, mdate = _dos_time(time.time())
    version = 45 if big else 20
    small = 0xFFFFFFFF if big else size
    extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, version, 0, 0, mtime, mdate, crc, small, small,
        len(name), len(extra),
    ) + name + extra  # fmt: skip
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, version | (3 << 8), version, 0, 0, mtime, mdate, crc,
        small, small, len(name), len(extra), 0, 0, 0, 0o100644 << 16, 0,
    ) + name + extra  # fmt: skip
    cd_offset = len(local) + size
    tail = b""
    if big:
        z64_offset = cd_offset + len(central)
        tail += struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45 | (3 << 8), 45, 0, 0, 1, 1, len(central), cd_offset
        )
        tail += struct.pack("<IIQI", 0x07064B50, 0, z64_offset, 1)
    eocd = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
        0xFFFFFFFF if big else cd_offset, 0,
    )  # fmt: skip
    return local, central + tail + eocd


class _Reader:
    """Exact reads from an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def _more(self) -> bool:
        for chunk in self.chunks:
            if chunk:
                self.buf += chunk
                return True
        return False

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise CorruptDownload("archive ends early")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def stream(self, n: int | None) -> Iterator[bytes]:
        """Up to ``n`` bytes (all if None) in chunks; `CorruptDownload` if fewer exist."""
        left = n
        while left is None or left > 0:
            if not self.buf and not self._more():
                if left is None:
                    return
                raise CorruptDownload("archive ends early")
            take = len(self.buf) if left is None else min(left, len(self.buf))
            out, self.buf = self.buf[:take], self.buf[take:]
            if left is not None:
                left -= take
            yield out


def unzip_first(chunks: Iterator[bytes], write: Callable[[bytes], object], what: str) -> None:
    """Stream the first member of a ZIP archive (stored or deflated) to ``write``."""
    reader = _Reader(chunks)
    head = reader.exact(30)
    sig, _, flags, method, _, _, crc, csize, usize, nlen, xlen = struct.unpack("<IHHHHHIIIHH", head)
    if sig != 0x04034B50:
        raise StoreError(f"{what} is not a ciflow archive (no ZIP header)")
    reader.exact(nlen)
    extra = reader.exact(xlen)
    if 0xFFFFFFFF in (csize, usize):
        pos = 0
        while pos + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, pos)
            if tag == 1:
                fields = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
                if usize == 0xFFFFFFFF and fields:
                    usize = fields.pop(0)
                if csize == 0xFFFFFFFF and fields:
                    csize = fields.pop(0)
            pos += 4 + length
    if flags & 1:
        raise StoreError(f"{what} is an encrypted archive")
    check = 0
    if method == 0 and not flags & 8:
        for part in reader.stream(csize):
            check = zlib.crc32(part, check)
            write(part)
    elif method == 8:
        inflater = zlib.decompressobj(-15)
        for part in reader.stream(None):
            out = inflater.decompress(part)
            check = zlib.crc32(out, check)
            write(out)
            if inflater.eof:
                reader.buf = inflater.unused_data + reader.buf
                break
        if not inflater.eof:
            raise CorruptDownload("archive ends early")
        if flags & 8:
            first = struct.unpack("<I", reader.exact(4))[0]
            crc = struct.unpack("<I", reader.exact(4))[0] if first == 0x08074B50 else first
    else:
        raise StoreError(f"{what}: unsupported ZIP member (method {method}, flags {flags:#x})")
    if check != crc:
        raise CorruptDownload("checksum mismatch")


# -- the store ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One finalized artifact of the run."""

    name: str
    job_id: str
    id: int
    created_at: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Entry:
        try:
            ident = int(get_field(raw, "database_id") or 0)
        except (TypeError, ValueError):
            ident = 0
        created = get_field(raw, "created_at")
        return cls(
            name=str(raw.get("name") or ""),
            job_id=str(get_field(raw, "workflow_job_run_backend_id") or ""),
            id=ident,
            created_at=created if isinstance(created, str) else json.dumps(created),
        )


_NAME_LOCKS: dict[tuple[str, ...], tuple[threading.Lock, int]] = {}
_NAME_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _name_lock(*ident: str) -> Iterator[None]:
    """Serialise creates of one name by one job within this process (so "ours" is unique)."""
    with _NAME_LOCKS_GUARD:
        lock, users = _NAME_LOCKS.get(ident, (threading.Lock(), 0))
        _NAME_LOCKS[ident] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _NAME_LOCKS_GUARD:
            lock, users = _NAME_LOCKS[ident]
            if users == 1:
                del _NAME_LOCKS[ident]
            else:
                _NAME_LOCKS[ident] = (lock, users - 1)


Pieces = Callable[[], Iterable[bytes | memoryview]]


class DownloadingStore(Store):
    """`get` and `get_to_file` for stores whose values are downloaded from a signed URL.

    A subclass implements ``_download(key, sink_factory)``: find the value, stream it into the
    writer the factory returns (called again to restart after a retry), True if found.
    """

    def _download(self, key: str, sink_factory: Callable[[], Callable[[bytes], object]]) -> bool:
        raise NotImplementedError

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")
        box: list[io.BytesIO] = []

        def sink() -> Callable[[bytes], object]:
            box[:] = [io.BytesIO()]
            return box[0].write

        if not self._download(key, sink):
            return None
        return box[0].getvalue()

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` (replaced when complete); False if absent."""
        check_key(key)
        self.stats.add("get_to_file")
        path = Path(path)
        tmp = path.with_name(f".{path.name[:120]}.part~{secrets.token_hex(8)}")
        handle: list[BinaryIO] = []
        try:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                handle.append(open(tmp, "xb"))
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            fh = handle[0]

            def sink() -> Callable[[bytes], object]:
                fh.seek(0)
                fh.truncate()
                return fh.write

            if not self._download(key, sink):
                return False
            fh.close()
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


class GitHubArtifactStore(DownloadingStore):
    """A store in the artifacts of the current workflow run, shared by all its jobs."""

    def __init__(
        self,
        url: str = "github://",
        *,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        session: requests.Session | None = None,
    ) -> None:
        super().__init__(url)
        self.namespace = parse_namespace(url, "github")
        self.prefix = name_prefix(self.namespace)
        self.runtime = runtime_from_env(os.environ if env is None else env, "github")
        self._listed: dict[str, Entry] = {}  # name -> earliest finalized entry, last listing
        self._own: set[str] = set()  # names this store created (and won): deleted without a look
        self._fresh: tuple[float, list[Entry]] = (0.0, [])  # the newest listing and its time
        self._polled = 0.0  # the time of the listing `wait` looked at last
        self._fresh_changed = threading.Condition()
        self.http = GitHubHttp(
            self.runtime, ARTIFACT_SERVICE, self.stats.add, sleep=sleep,
            max_attempts=max_attempts, session=session, label="github store",
        )  # fmt: skip

    # -- helpers ---------------------------------------------------------------------------------

    def _ids(self, job_id: str | None = None) -> dict[str, str]:
        return {
            "workflow_run_backend_id": self.runtime.run_id,
            "workflow_job_run_backend_id": job_id or self.runtime.job_id,
        }

    def _entries(self, name: str | None = None) -> list[Entry]:
        """Finalized artifacts of the run (with ``name`` only), earliest first.

        Always one unfiltered ListArtifacts call (it costs the same as a filtered one): every
        listing, a create's read-back included, refreshes what `list`, `get` and `wait` see.
        """
        resp, _ = self.http.rpc("ListArtifacts", self._ids())
        raw = resp.get("artifacts") or []
        entries = [Entry.parse(a) for a in raw if isinstance(a, dict)]
        entries.sort(key=lambda e: (e.id, e.created_at))
        with self._fresh_changed:
            for entry in reversed(entries):  # earliest last: the winner of each name stays
                self._listed[entry.name] = entry
            self._fresh = (time.monotonic(), entries)
            self._fresh_changed.notify_all()
        if name is not None:
            entries = [e for e in entries if e.name == name]
        return entries

    def _keys(self, entries: list[Entry], prefix: str) -> list[str]:
        keys = {key_from_name(e.name, self.prefix) for e in entries}
        return sorted(k for k in keys if k is not None and k.startswith(prefix))

    def _delete_entry(self, name: str, job_id: str) -> bool:
        """DeleteArtifact; False if there was nothing to delete."""
        try:
            self.http.rpc("DeleteArtifact", {**self._ids(job_id), "name": name})
        except TwirpError as exc:
            if exc.not_found:
                return exc.ambiguous  # not found after a lost answer: that attempt deleted it
            raise
        return True

    def _name(self, key: str) -> str:
        return artifact_name(key, self.prefix)

    # -- create ----------------------------------------------------------------------------------

    def _create(self, key: str, name: str, pieces: Pieces, total: int, sole: bool) -> bool:
        with _name_lock(self.runtime.origin, self.runtime.run_id, self.runtime.job_id, name):
            for _ in range(self.http.max_attempts):  # again only after removing our own orphan
                try:
                    resp, _ = self.http.rpc(
                        "CreateArtifact", {**self._ids(), "name": name, "version": ARTIFACT_VERSION}
                    )
                except TwirpError as exc:
                    if not exc.exists:
                        raise
                    if exc.ambiguous and self._remove_own_orphan(name):
                        continue
                    return False
                upload_url = get_field(resp, "signed_upload_url")
                if get_field(resp, "ok") is False or not isinstance(upload_url, str):
                    raise StoreError(f"github store: CreateArtifact for {key!r} was not accepted")
                return self._upload_and_decide(key, name, upload_url, pieces, total, sole)
        raise StoreError(
            f"github store: cannot create {key!r}: its name stays taken by a lost request"
        )

    def _remove_own_orphan(self, name: str) -> bool:
        """After a lost CreateArtifact answer and a 409: drop our unfinalized artifact if any."""
        if self._entries(name):
            return False  # a finalized value exists: the key is taken
        return self._delete_entry(name, self.runtime.job_id)

    def _upload_and_decide(
        self, key: str, name: str, url: str, pieces: Pieces, total: int, sole: bool
    ) -> bool:
        try:
            sha = self.http.upload(url, pieces, total)
        except Exception:
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)  # release the name
            raise
        body = {**self._ids(), "name": name, "size": str(total), "hash": f"sha256:{sha}"}
        ours: int | None = None
        try:
            resp, _ = self.http.rpc("FinalizeArtifact", body)
            if get_field(resp, "ok") is False:
                with contextlib.suppress(StoreError):
                    self._delete_entry(name, self.runtime.job_id)
                raise StoreError(f"github store: FinalizeArtifact for {key!r} was not accepted")
            with contextlib.suppress(TypeError, ValueError):
                ours = int(get_field(resp, "artifact_id") or 0) or None
        except TwirpError as exc:
            if not exc.ambiguous:  # may have finalized on a lost attempt: read back below
                with contextlib.suppress(StoreError):
                    self._delete_entry(name, self.runtime.job_id)
                raise
            ours = None
        if sole and ours is not None:
            self._own.add(name)
            return True  # finalized, and nobody else creates this key: no read-back needed
        entries = self._entries(name)
        for pause in READ_BACK_PAUSES:  # ours must be listed: give a lagging listing a moment
            if any(e.job_id == self.runtime.job_id for e in entries):
                break
            self.http.sleep(pause)
            entries = self._entries(name)
        mine = [e for e in entries if e.job_id == self.runtime.job_id]
        if ours is None and len(mine) == 1:
            ours = mine[0].id
        if ours is None or all(e.id != ours for e in entries):
            # not finalized, or deleted at once by another client: not in the store
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)
            if ours is None:
                raise StoreError(f"github store: FinalizeArtifact for {key!r} left no artifact")
            return False
        winner = entries[0]
        if winner.id == ours:
            self._own.add(name)
            return True
        if winner.job_id != self.runtime.job_id and len(mine) == 1:
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)
        return False

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Create the artifact of ``key`` unless one exists (read back decides). True if written.

        With ``sole`` (nobody else creates ``key``) a finalized upload is not read back: one
        ListArtifacts call fewer.
        """
        name = self._name(key)
        self.stats.add("create")
        view = memoryview(data)
        head, tail = zip_frame(len(view), zlib.crc32(view))
        return self._create(
            key, name, lambda: (head, view, tail), len(head) + len(view) + len(tail), sole
        )

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, streaming ``path`` into block uploads (never all in memory)."""
        name = self._name(key)
        self.stats.add("create_from_file")
        path = Path(path)
        crc, size = 0, 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        head, tail = zip_frame(size, crc)

        def pieces() -> Iterator[bytes | memoryview]:
            yield head
            left = size
            try:
                with open(path, "rb") as fh:
                    while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                        left -= len(chunk)
                        yield chunk
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if left:
                raise StoreError(f"{path} shrank while it was stored under {key!r}")
            yield tail

        return self._create(key, name, pieces, len(head) + size + len(tail), sole)

    # -- get ------------------------------------------------------------------------------------

    def _download(self, key: str, sink_factory: Callable[[], Callable[[bytes], object]]) -> bool:
        name = self._name(key)
        winner = self._listed.get(name)  # from the last full listing: saves a ListArtifacts
        if winner is None:
            entries = self._entries(name)
            if not entries:
                return False
            winner = entries[0]
        try:
            resp, _ = self.http.rpc(
                "GetSignedArtifactURL", {**self._ids(winner.job_id), "name": name}
            )
        except TwirpError as exc:
            if exc.not_found:
                self._listed.pop(name, None)
                return False  # deleted since the listing
            raise
        url = get_field(resp, "signed_url")
        if not isinstance(url, str) or not url:
            raise StoreError(f"github store: GetSignedArtifactURL for {key!r} gave no URL")

        def consume(chunks: Iterator[bytes]) -> bool:
            unzip_first(chunks, sink_factory(), f"artifact {name!r}")
            return True

        return bool(self.http.download(url, consume))

    # -- list / delete / close ------------------------------------------------------------------

    def list(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix`` (one ListArtifacts call sees every job's)."""
        self.stats.add("list")
        return self._keys(self._entries(), prefix)

    def wait(
        self,
        prefix: str,
        known: Collection[str] = (),
        timeout: float = 1.0,
        poll: float | None = None,
    ) -> builtins.list[str]:
        """Like `Store.wait`, listing at most once per ``poll`` (default `poll`).

        A listing this store made meanwhile for another reason (a create's read-back, a get)
        counts as that poll, and wakes the waiter at once.
        """
        interval = self.poll if poll is None else poll
        deadline = time.monotonic() + timeout
        while True:
            with self._fresh_changed:
                stamp, entries = self._fresh
                now = time.monotonic()
                fresh: list[Entry] | None = None
                if stamp > self._polled:  # a listing nobody waiting has looked at yet
                    self._polled = stamp
                    fresh = entries
                elif now - stamp < interval:  # too early for a poll
                    remaining = deadline - now
                    if remaining <= 0:
                        return self._keys(entries, prefix)
                    self._fresh_changed.wait(min(stamp + interval - now, remaining))
                    continue
            if fresh is None:
                self.stats.add("list")
                fresh = self._entries()
                with self._fresh_changed:
                    self._polled = max(self._polled, self._fresh[0])
            keys = self._keys(fresh, prefix)
            if time.monotonic() >= deadline or any(k not in known for k in keys):
                return keys

    def delete(self, key: str) -> None:
        """Delete the artifact holding ``key``'s value, the earliest of its name (absent is fine).

        Later entries of the name are racers' leftovers that their writers remove; deleting
        them here could remove a value created while this delete runs. A value this store
        created is deleted without listing first.
        """
        name = self._name(key)
        self.stats.add("delete")
        self._listed.pop(name, None)
        if name in self._own:  # ours, and the earliest of its name: no need to look
            self._own.discard(name)
            self._delete_entry(name, self.runtime.job_id)
            return
        entries = self._entries(name)
        if entries:
            self._delete_entry(name, entries[0].job_id)

    def close(self) -> None:
        """Close the HTTP session."""
        self.http.close()
