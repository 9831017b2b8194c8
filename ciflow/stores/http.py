"""The store of a ``ciflow serve`` coordinator, ``http://HOST:PORT[/NS]`` or ``https://…``.

Every call is one request of the coordinator's API (listed in `ciflow.server`; docs/
architecture.md, "ciflow serve and the http store") through the shared retrying `Transport`.
Creates carry a random ``X-Ciflow-Create-Id`` kept across their retries: the server answers
a retry of a create whose answer was lost 201 again, not 412. `Store.wait` is a long poll
(``/v1/wait``): the server answers once the keys under the prefix are no longer the known ones.

Configuration: the bearer token from ``CIFLOW_STORE_TOKEN`` (a token of the server's
``--token-file``), a CA bundle for a self-signed server from ``?ca_file=`` or
``CIFLOW_STORE_CA_FILE``, ``?encoding=zstd|gzip`` to compress bodies on the wire (default none:
outputs are zstd archives already), ``?retry_for=SECONDS`` (or ``?timeout=``, as on the Redis and
S3 stores; default 30): how long one call keeps
retrying a server that does not answer or answers 5xx before it fails with `StoreFlaky`.
A refused token (401, 403) or a certificate that does not verify is `StoreDenied`: one line,
exit 2, never retried. A server whose disk refuses writes answers 507: `StoreUnavailable`.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import re
import secrets
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import requests

from ..errors import UsageError
from .base import (
    Store,
    StoreDenied,
    StoreError,
    StoreFlaky,
    StoreUnavailable,
    check_key,
    into_file,
)
from .transport import Retry, Sent, Transport

__all__ = ["CodecError", "Decoder", "Encoder", "HttpStore", "keys_digest"]

T = TypeVar("T")

#: the API version (a path segment) and the namespace of a URL without a path
API, DEFAULT_NAMESPACE = "v1", "default"
NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: the longest long-poll the server holds (a longer `wait` asks again)
MAX_WAIT = 30.0
ENCODINGS = ("zstd", "gzip")
CREATE_ID = "X-Ciflow-Create-Id"
REPLAYED = "X-Ciflow-Replayed"
MAX_BODY = "X-Ciflow-Max-Body"
#: bytes read and written at a time when streaming; values this large HEAD before a PUT
CHUNK = 1 << 20
#: values smaller than this are sent as they are even with ``?encoding=``
COMPRESS_MIN = 1024
RETRY_FOR = 30.0
BACKOFF, BACKOFF_CAP = 0.25, 5.0
TIMEOUT = (5.0, 60.0)
_QUERY = frozenset({"ca_file", "encoding", "retry_for", "timeout"})


class CodecError(ValueError):
    """A body is not valid in its ``Content-Encoding`` (corrupt or cut off)."""


def keys_digest(keys: Collection[str]) -> str:
    """The digest the long-poll compares: sha256 of the sorted keys, one per line."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


class Decoder:
    """Undoes one ``Content-Encoding`` (identity, gzip, zstd) in pieces of at most `CHUNK`."""

    def __init__(self, encoding: str) -> None:
        import pyzstd

        self.encoding = encoding.strip().lower() or "identity"
        self._zlib: Any = None
        self._zstd: Any = None
        if self.encoding == "gzip":
            self._zlib = zlib.decompressobj(wbits=31)
        elif self.encoding == "zstd":
            self._zstd = pyzstd.EndlessZstdDecompressor()
        elif self.encoding != "identity":
            raise CodecError(f"unsupported Content-Encoding {encoding!r}: use gzip or zstd")

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in bounded pieces (a bomb never fills memory)."""
        import pyzstd

        try:
            if self._zlib is not None:
                yield from self._gunzip(data)
            elif self._zstd is not None:
                while True:
                    out, data = self._zstd.decompress(data, CHUNK), b""
                    if out:
                        yield out
                    if self._zstd.needs_input:
                        break
            elif data:
                yield data
        except (zlib.error, pyzstd.ZstdError) as exc:
            raise CodecError(f"the {self.encoding} body is corrupt: {exc}") from exc

    def _gunzip(self, data: bytes) -> Iterator[bytes]:
        while data:
            out = self._zlib.decompress(data, CHUNK)
            if out:
                yield out
            data = self._zlib.unconsumed_tail

    def finish(self) -> bytes:
        """The last decoded bytes; `CodecError` if the body was cut off."""
        if self._zlib is not None:
            out: bytes = self._zlib.flush()
            if not self._zlib.eof:
                raise CodecError("the gzip body is cut off")
            return out
        if self._zstd is not None and not self._zstd.at_frame_edge:
            raise CodecError("the zstd body is cut off")
        return b""


class Encoder:
    """Applies one ``Content-Encoding`` (gzip or zstd) to a stream: `feed` pieces, `finish`."""

    def __init__(self, encoding: str) -> None:
        import pyzstd

        if encoding not in ENCODINGS:
            raise CodecError(f"unsupported encoding {encoding!r}: use gzip or zstd")
        self.encoding = encoding
        gzip = encoding == "gzip"
        codec: Any = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else pyzstd.ZstdCompressor(3)
        self.feed: Callable[[bytes], bytes] = codec.compress
        self.finish: Callable[[], bytes] = codec.flush


class _FileBody:
    """A request body streamed from a file (encoded), read from its start for every attempt."""

    def __init__(self, path: Path, size: int, encoding: str | None) -> None:
        self.path, self.size, self.encoding = path, size, encoding

    def __iter__(self) -> Iterator[bytes]:
        encoder = Encoder(self.encoding) if self.encoding else None
        with open(self.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                yield encoder.feed(chunk) if encoder else chunk
        if encoder:
            yield encoder.finish()


class _SizedFileBody(_FileBody):
    """A body of known length (sent with ``Content-Length``; an encoded one goes chunked)."""

    def __len__(self) -> int:
        return self.size


def _parse(url: str) -> tuple[str, str, dict[str, str]]:
    """The base URL (scheme, host, port, namespace path), the namespace and the options."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not an http store URL: {url!r}; use http://HOST:PORT[/NAMESPACE]")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise UsageError(f"http store URL {url!r}: {exc}") from None
    path = parts.path.strip("/")
    if path and (not NAMESPACE.fullmatch(path) or path in (API, "healthz")):
        raise UsageError(
            f"http store URL {url!r}: the path must be one namespace of [A-Za-z0-9._-] "
            "(at most 64 characters), e.g. http://HOST:PORT/team-a"
        )
    options: dict[str, str] = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in _QUERY:
            known = ", ".join(sorted(_QUERY))
            raise UsageError(f"http store URL {url!r}: unknown option {name!r} (known: {known})")
        options[name] = values[-1]
    base = f"{parts.scheme}://{parts.netloc}" + (f"/{path}" if path else "")
    return base, path or DEFAULT_NAMESPACE, options


def attempts_for(budget: float) -> int:
    """Attempts whose full back-off pauses add up to ``budget`` seconds (jitter halves some)."""
    attempts, total = 1, 0.0
    while total < budget and attempts < 1000:
        total += min(BACKOFF_CAP, BACKOFF * 2.0 ** (attempts - 1))
        attempts += 1
    return attempts


def _server_says(resp: requests.Response) -> str:
    """The one-line ``error`` of a server's JSON answer, else its status text."""
    try:
        text = str(resp.json()["error"])
    except (ValueError, KeyError, TypeError):  # HEAD answers say it in a header
        text = resp.headers.get("X-Ciflow-Error") or resp.reason or "no reason given"
    return " ".join(text.split())[:300]


class _Session(requests.Session):
    """A session that turns a certificate that does not verify into a refusal (no retries)."""

    label = "http store"

    def request(self, *args: Any, **kw: Any) -> requests.Response:
        try:
            return super().request(*args, **kw)
        except requests.exceptions.SSLError as exc:
            text = str(exc).lower()
            if "certificate verify failed" in text:
                fix = "give its CA certificate in CIFLOW_STORE_CA_FILE (or ?ca_file=PATH)"
                raise StoreDenied(
                    f"{self.label}: its TLS certificate does not verify; {fix}"
                ) from None
            if "wrong version number" in text:
                raise StoreDenied(f"{self.label}: it does not speak TLS; use http://") from None
            raise


class HttpStore(Store):
    """A client of one ``ciflow serve`` namespace (``env``, ``sleep``: for tests)."""

    def __init__(
        self,
        url: str,
        *,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(url)
        env = os.environ if env is None else env
        self.base, self.namespace, options = _parse(url)
        self.label = f"http store {self.base}"
        encoding = options.get("encoding", "identity") or "identity"
        if encoding not in ("identity", *ENCODINGS):
            raise UsageError(f"{self.label}: ?encoding= takes zstd, gzip or identity")
        self.encoding = None if encoding == "identity" else encoding
        try:
            # ?timeout= as on redis:// and s3:// (the same bound)
            retry_for = float(options.get("retry_for", options.get("timeout", RETRY_FOR)))
        except ValueError:
            raise UsageError(f"{self.label}: ?retry_for= (?timeout=) takes seconds") from None
        session = _Session()
        session.label = self.label
        ca_file = options.get("ca_file") or env.get("CIFLOW_STORE_CA_FILE")
        if ca_file and not Path(ca_file).is_file():
            raise UsageError(f"{self.label}: CA file {ca_file} does not exist")
        # given with each request: REQUESTS_CA_BUNDLE would override the session's
        self._tls: dict[str, Any] = {"verify": ca_file} if ca_file else {}
        token = (env.get("CIFLOW_STORE_TOKEN") or "").strip()
        if token:
            from ..execution.masking import MASKER

            MASKER.add(token)
            session.headers["Authorization"] = f"Bearer {token}"
        session.headers["Accept-Encoding"] = self.encoding or "identity"
        self.transport = Transport(
            self.label, session=session, sleep=sleep, max_attempts=attempts_for(retry_for),
            backoff_base=BACKOFF, backoff_cap=BACKOFF_CAP, count=self.stats.add,
            trouble=self.stats.trouble,
        )  # fmt: skip
        self.max_body: int | None = None  # the server's --max-body, once an answer said it

    def _send(
        self, method: str, path: str, read: Callable[[requests.Response], T], what: str, **kw: Any
    ) -> Sent[T]:
        """One call of the API through the transport (``path`` after the API version).

        ``stats`` counts each HTTP attempt as ``PUT``, ``GET``, ``HEAD``, ``DELETE``, ``LIST``
        or ``WAIT`` (the summary shows those as API calls), beside the operations.
        """
        url = f"{self.base}/{API}/{path}"
        counter = method if path.startswith("keys/") else path.upper()
        try:
            return self.transport.send(
                method, url, read, counter=counter, what=what,
                fail_fast=self._refused, **{"timeout": TIMEOUT, **self._tls, **kw},
            )  # fmt: skip
        except StoreFlaky as exc:
            if "connection" not in str(exc):
                raise
            raise StoreFlaky(f"{exc}; is `ciflow serve` running there?") from None

    def _refused(self, resp: requests.Response) -> None:
        """Answers no retry can change: a refused token, a server whose disk refuses writes."""
        limit = resp.headers.get(MAX_BODY)
        if limit and limit.isdigit():
            self.max_body = int(limit)
        status = resp.status_code
        if status in (401, 403):
            which = "a read-write token" if status == 403 else "a token"
            fix = f"set CIFLOW_STORE_TOKEN to {which} of the server's --token-file"
            raise StoreDenied(f"{self.label}: HTTP {status}: {_server_says(resp)}; {fix}")
        if status == 507:
            raise StoreUnavailable(f"{self.label}: the server cannot write: {_server_says(resp)}")

    def _failed(self, resp: requests.Response, key: str) -> StoreError:
        """The error for an answer a call did not expect (4xx: 400, 409, 413, ...)."""
        return StoreError(f"{self.label}: {key!r}: HTTP {resp.status_code}: {_server_says(resp)}")

    @staticmethod
    def _key_path(key: str) -> str:
        return "keys/" + quote(key, safe="/")

    @staticmethod
    def _chunks(resp: requests.Response) -> Iterator[bytes]:
        """The decoded body of a streamed answer; a broken one is retried."""
        from urllib3.exceptions import HTTPError as Urllib3Error

        decoder = Decoder(resp.headers.get("Content-Encoding", "identity"))
        try:
            for raw in resp.raw.stream(CHUNK, decode_content=False):
                yield from decoder.feed(raw)
            yield decoder.finish()
        except (Urllib3Error, OSError, CodecError) as exc:
            raise Retry(f"the answer broke off ({type(exc).__name__}: {exc})") from exc

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """PUT ``data`` if absent (atomic on the server). True if this call created it."""
        check_key(key)
        self.stats.add("create")
        headers = {}
        body = bytes(data)
        if self.encoding and len(body) >= COMPRESS_MIN:
            encoder = Encoder(self.encoding)
            body = encoder.feed(body) + encoder.finish()
            headers["Content-Encoding"] = self.encoding
        sent = self._put(key, body, headers)
        if sent.value or not sent.ambiguous:
            return sent.value
        # a lost answer and a 412 the server could not match (it restarted in between)
        return sole or self.get(key) == bytes(data)

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Stream ``path`` to the server (never whole in memory) if ``key`` is absent."""
        check_key(key)
        self.stats.add("create_from_file")
        path = Path(path)
        try:
            size = path.stat().st_size
            open(path, "rb").close()
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        if size >= CHUNK:
            if self.exists(key):  # do not send a large body only to hear 412
                return False
            if self.max_body is not None and size > self.max_body:
                raise StoreError(
                    f"{self.label}: {path} ({size} bytes) is larger than the server accepts "
                    f"under {key!r} (its --max-body is {self.max_body} bytes)"
                )
        body: _FileBody = _SizedFileBody(path, size, None)
        headers = {}
        if self.encoding and size >= COMPRESS_MIN:
            body = _FileBody(path, size, self.encoding)
            headers["Content-Encoding"] = self.encoding
        sent = self._put(key, body, headers)
        return sent.value or (sent.ambiguous and sole)

    def _put(self, key: str, body: Any, headers: dict[str, str]) -> Sent[bool]:
        headers = {**headers, "If-None-Match": "*", CREATE_ID: secrets.token_hex(16)}

        def read(resp: requests.Response) -> bool:
            if resp.status_code in (200, 201):
                return True
            if resp.status_code == 412:
                return False
            raise self._failed(resp, key)

        return self._send("PUT", self._key_path(key), read, f"create {key!r}",
                          data=body, headers=headers)  # fmt: skip

    def _download(self, key: str, sink: Callable[[], Callable[[bytes], object]]) -> bool:
        """Stream the value into the writer ``sink()`` gives (again after a retry); found?"""

        def read(resp: requests.Response) -> bool:
            if resp.status_code in (200, 404):
                if resp.status_code == 200:
                    write = sink()
                    for chunk in self._chunks(resp):
                        write(chunk)
                return resp.status_code == 200
            raise self._failed(resp, key)

        return self._send("GET", self._key_path(key), read, f"get {key!r}", stream=True).value

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")
        box: builtins.list[io.BytesIO] = []

        def sink() -> Callable[[bytes], object]:
            box[:] = [io.BytesIO()]
            return box[0].write

        return box[0].getvalue() if self._download(key, sink) else None

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` (replaced when complete); False if absent."""
        check_key(key)
        self.stats.add("get_to_file")
        return into_file(Path(path), lambda sink: self._download(key, sink))

    def exists(self, key: str) -> bool:
        """One HEAD request."""
        check_key(key)
        self.stats.add("exists")

        def read(resp: requests.Response) -> bool:
            if resp.status_code in (200, 404):
                return resp.status_code == 200
            raise self._failed(resp, key)

        return self._send("HEAD", self._key_path(key), read, f"exists {key!r}").value

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (absent is fine)."""
        check_key(key)
        self.stats.add("delete")

        def read(resp: requests.Response) -> None:
            if resp.status_code not in (200, 204, 404):
                raise self._failed(resp, key)

        self._send("DELETE", self._key_path(key), read, f"delete {key!r}")

    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys starting with ``prefix``."""
        self.stats.add("list")
        return self._keys("list", {"prefix": prefix}, prefix)

    def _keys(
        self, route: str, params: dict[str, str], prefix: str, **kw: Any
    ) -> builtins.list[str]:
        def read(resp: requests.Response) -> builtins.list[str]:
            if resp.status_code != 200:
                raise self._failed(resp, prefix)
            try:
                return [str(k) for k in resp.json()["keys"]]
            except (ValueError, KeyError, TypeError) as exc:
                raise Retry(f"the answer is not a key list ({exc})") from exc

        return self._send("GET", route, read, f"{route} {prefix!r}", params=params, **kw).value

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """Long-poll: the server answers when the keys under ``prefix`` change (no polling)."""
        known = set(known)
        present = sorted(k for k in known if k.startswith(prefix))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.list(prefix)
            hold = min(remaining, MAX_WAIT)
            self.stats.add("wait")
            params = {"prefix": prefix, "known": keys_digest(present), "timeout": f"{hold:.3f}"}
            keys = self._keys("wait", params, prefix, timeout=(TIMEOUT[0], hold + 15.0))
            if any(k not in known for k in keys) or time.monotonic() >= deadline:
                return keys
            present = keys  # only deletes: wait on what is there now

    def close(self) -> None:
        """Close the HTTP session."""
        self.transport.close()
