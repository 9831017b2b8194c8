"""The S3 store, ``s3://BUCKET[/PREFIX]``: AWS S3 and services that speak its API.

Key ``a/b`` is the object ``PREFIX/a/b`` of the bucket. The URL's options (``?endpoint=``,
``region``, ``addressing``, ``timeout``, ``page``, ``part``) are read by
`ciflow.stores.s3_client.S3Options`; endpoint, region and credentials otherwise come from the
standard AWS chain (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_REGION``, the key
variables, ``AWS_PROFILE``, the config and credentials files, roles).

- **create** is ``PutObject`` with ``If-None-Match: *``: the service writes only if the key is
  absent, atomically, and answers 412 otherwise (False). An S3 object appears whole or not at
  all, so a reader never sees part of a value. Not every S3 service honours the header, so the
  first create of a store object writes a probe key twice (``PREFIX/.ciflow~probe/<random>``,
  never a key as it holds a ``~``): a second success means the service ignores the condition
  and the store refuses to work (`UsageError`) instead of racing silently.
- **create_from_file** uploads a file of up to one part (``?part=``, 8 MiB) with one
  ``PutObject``, a larger one as a multipart upload whose ``CompleteMultipartUpload`` carries
  ``If-None-Match: *``; a key that exists is found by a HEAD before any byte is sent, and an
  upload that lost is aborted. Parts are read from the file in pieces (`FilePart`). A writer
  killed mid-upload leaves its parts behind: give the bucket a lifecycle rule that aborts
  incomplete multipart uploads after a day.
- **Lost answers.** Every value carries the metadata ``ciflow-writer: <random token>``. When
  a create was retried after an attempt that may have taken effect and then hears 412 (or
  ``NoSuchUpload``), a HEAD settles it: the token is ours, so the create won.
- **get/get_to_file** stream ``GetObject``'s body (a broken download restarts); **exists** is
  one ``HeadObject``; **list** pages through ``ListObjectsV2`` (``?page=`` keys a page, 1000)
  and returns the sorted keys, skipping objects that are not keys; **delete** is one
  ``DeleteObject``; `Store.wait` polls `list`.
- **Retries**: botocore's own are off; every request goes through the shared
  `Transport.retrying` loop (6 attempts, jittered backoff 1 s doubling to 30 s, or
  ``Retry-After``), which counts ``retries`` and the time in trouble in ``stats``, and makes a
  retried create's ambiguity known (botocore would retry a lost 200 into a 412 unseen).
  ``?timeout=SECONDS`` also ends a call's retries at that deadline (and caps the connect
  timeout). Transient: connection
  failures, timeouts, 408/429/5xx (501 aside), ``SlowDown``, ``RequestTimeout``, 409
  ``ConditionalRequestConflict``. Refused credentials are `StoreDenied` at once; a missing
  bucket is a clear `StoreUnavailable` when the store is opened (one ``ListObjectsV2``).
- ``stats`` counts each store operation and each HTTP attempt by its S3 API name.

A key that is also the folder of other keys (``a/b`` and ``a/b/c``) is not refused here: S3 has
no folders to clash, and ciflow's key layout (docs/architecture.md) never makes such keys.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ..errors import CiflowError, UsageError
from .base import Store, StoreError, StoreFlaky, check_key
from .s3_client import MAX_PARTS, FilePart, MiB, S3Options, error_code, failure, make_client
from .transport import MAX_ATTEMPTS, Retry, Sent, Transport

__all__ = ["S3Store"]

T = TypeVar("T")

#: bytes a download writes at a time
CHUNK = 1 << 20
#: the metadata naming the writer of a value (S3 sends it as ``x-amz-meta-ciflow-writer``)
WRITER = "ciflow-writer"
#: the folder, under the prefix, of the conditional-write probe (not a key: it holds ``~``)
PROBE = ".ciflow~probe"
_HINT = "check that the service is up and reachable (AWS_ENDPOINT_URL, ?endpoint=) or try later"


class S3Store(Store):
    """A store in an S3 bucket (under a prefix), safe for any number of machines.

    ``sleep`` is the pause between retries and ``max_attempts`` bounds them (tests pass their
    own); the rest comes from the URL and the AWS chain.
    """

    def __init__(
        self,
        url: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        super().__init__(url)
        self.options = options = S3Options.parse(url)
        self.bucket, self.base = options.bucket, options.base
        self._sleep = sleep
        self._local = threading.local()
        self._probe_lock = threading.Lock()
        self._conditional = False  # True once the probe saw the service honour If-None-Match
        self.client: Any = make_client(options)  # first: `UsageError` if boto3 is missing
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        self._errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)
        self.transport = Transport(
            options.label, sleep=self._pause, max_attempts=max_attempts,
            count=self.stats.add, trouble=self.stats.trouble,
        )  # fmt: skip
        self._checksums = self.client.meta.config.request_checksum_calculation == "when_supported"
        try:  # the bucket exists and the credentials may list it: said now, not mid-run
            self._call("ListObjectsV2", "open", self._first_page)
        except BaseException:
            self.close()
            raise

    def _first_page(self) -> object:
        return self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.base, MaxKeys=1)

    # -- the protocol ------------------------------------------------------------------------

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Write ``data`` under ``key`` if absent (``If-None-Match: *``). True if written."""
        check_key(key)
        self.stats.add("create")
        self._ensure_conditional()
        return self._put(key, lambda: data, sole)

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, streaming ``path`` (a multipart upload if above one part)."""
        check_key(key)
        self.stats.add("create_from_file")
        self._ensure_conditional()
        try:
            fh = open(path, "rb")
            size = os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        with fh:
            try:
                if size <= self.options.part:
                    return self._put(key, lambda: _rewound(fh), sole)
                return self._multipart(key, fh, size, sole)
            except OSError as exc:  # the file, not the service (botocore wraps its own)
                raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if absent."""
        check_key(key)
        self.stats.add("get")

        def fetch() -> bytes | None:
            body = self._body(key)
            if body is None:
                return None
            with contextlib.closing(body):
                data: bytes = body.read()
                return data

        return self._call("GetObject", f"get {key}", fetch).value

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` (replaced when complete); False if absent."""
        check_key(key)
        self.stats.add("get_to_file")
        path = Path(path)
        tmp = path.with_name(f".{path.name[:120]}.part~{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(tmp, "xb")
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        try:
            with fh:
                found = self._call("GetObject", f"get {key}", lambda: self._download(key, fh, path))
            if found.value:
                try:
                    os.replace(tmp, path)
                except OSError as exc:
                    raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            return found.value
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value: one ``HeadObject``."""
        check_key(key)
        self.stats.add("exists")
        return self._head(key) is not None

    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys starting with ``prefix`` (``ListObjectsV2``, every page)."""
        self.stats.add("list")
        keys: builtins.list[str] = []
        ask: dict[str, Any] = {
            "Bucket": self.bucket, "Prefix": self.base + prefix, "MaxKeys": self.options.page
        }  # fmt: skip
        while True:
            page = self._call(
                "ListObjectsV2", f"list {prefix!r}", lambda: self.client.list_objects_v2(**ask)
            ).value
            skip = len(self.base)
            keys.extend(k for o in page.get("Contents", ()) if _is_key(k := o["Key"][skip:]))
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return sorted(keys)
            ask["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, key: str) -> None:
        """Remove ``key`` if present (absent is fine)."""
        check_key(key)
        self.stats.add("delete")
        name = self.base + key
        self._call(
            "DeleteObject", f"delete {key}",
            lambda: self.client.delete_object(Bucket=self.bucket, Key=name),
        )  # fmt: skip

    def close(self) -> None:
        """Close the client's connections."""
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.transport.close()

    # -- calls and retries ---------------------------------------------------------------------

    def _call(self, api: str, what: str, request: Callable[[], T]) -> Sent[T]:
        """Make one S3 request through the shared retry loop (each attempt counted as ``api``).

        A botocore error becomes a `Retry` or the final error (`s3_client.failure`); other
        exceptions (a local file that cannot be written) pass through unretried. With
        ``?timeout=`` the retries also end at that deadline.
        """
        local, timeout = self._local, self.options.timeout
        local.deadline = None if timeout is None else time.monotonic() + timeout
        local.last = False

        def attempt() -> T:
            began = time.monotonic()
            self.stats.add(api)
            try:
                return request()
            except self._errors as exc:
                outcome = failure(exc, self.options, what, self.client.meta.endpoint_url)
                if isinstance(outcome, Retry) and local.last:
                    self.stats.trouble(began, time.monotonic())
                    outcome = StoreFlaky(
                        f"{self.options.label}: {what} failed for {timeout:g} s (?timeout=): "
                        f"{outcome.why}"
                    )
                raise outcome from None

        try:
            return self.transport.retrying(what, attempt)
        except StoreFlaky as exc:
            raise StoreFlaky(f"{exc}; {_HINT}") from None

    def _pause(self, delay: float) -> None:
        """The transport's pause between attempts, cut at the call's deadline (if any)."""
        deadline = getattr(self._local, "deadline", None)
        if deadline is not None and time.monotonic() + delay >= deadline:
            self._local.last = True
            delay = max(0.0, deadline - time.monotonic())
        self._sleep(delay)

    # -- creating ------------------------------------------------------------------------------

    def _ensure_conditional(self) -> None:
        """Probe the service's conditional writes once per store object (`UsageError` if not)."""
        if self._conditional:
            return
        with self._probe_lock:
            if not self._conditional:
                self._probe()
                self._conditional = True

    def _probe(self) -> None:
        name = f"{self.base}{PROBE}/{secrets.token_hex(8)}"
        refused = (
            f"{self.options.label}: this S3 service does not support conditional writes "
            "(If-None-Match); ciflow cannot use it safely"
        )
        fix = "use a service that honours If-None-Match: * on PutObject (AWS S3 does since 2024)"

        def put() -> bool:
            try:
                self.client.put_object(Bucket=self.bucket, Key=name, Body=b"probe", IfNoneMatch="*")
            except self._errors as exc:
                code, status = error_code(exc)
                if status == 412:
                    return False
                if status in (400, 501) or code in ("NotImplemented", "InvalidArgument"):
                    raise UsageError(f"{refused}: it refused the header ({code}); {fix}") from None
                raise
            return True

        what = "the conditional-write check"
        try:
            self._call("PutObject", what, put)
            again = self._call("PutObject", what, put).value
        finally:
            with contextlib.suppress(CiflowError):
                self._call(
                    "DeleteObject", what,
                    lambda: self.client.delete_object(Bucket=self.bucket, Key=name),
                )  # fmt: skip
        if again:
            raise UsageError(f"{refused}: a second create of one key also succeeded; {fix}")

    def _put(self, key: str, body: Callable[[], object], sole: bool) -> bool:
        """One conditional ``PutObject`` of ``body()`` (called again for each attempt)."""
        token = secrets.token_hex(12)

        def send() -> bool:
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=self.base + key, Body=body(), IfNoneMatch="*",
                    Metadata={WRITER: token},
                )  # fmt: skip
            except self._errors as exc:
                if error_code(exc)[1] == 412:
                    return False
                raise
            return True

        sent = self._call("PutObject", f"create {key}", send)
        if sent.value or not sent.ambiguous:
            return sent.value
        return sole or self._writer(key) == token  # a lost answer: was the value ours?

    def _multipart(self, key: str, fh: BinaryIO, size: int, sole: bool) -> bool:
        """Upload ``fh`` in parts; the completion creates the key if absent. True if written."""
        if self._head(key) is not None:
            return False  # it exists: no need to send a byte
        token, name, what = secrets.token_hex(12), self.base + key, f"create {key}"
        extra = {"ChecksumAlgorithm": "CRC32"} if self._checksums else {}
        started = self._call(
            "CreateMultipartUpload", what,
            lambda: self.client.create_multipart_upload(
                Bucket=self.bucket, Key=name, Metadata={WRITER: token}, **extra
            ),
        )  # fmt: skip
        upload: str = started.value["UploadId"]
        won = False
        try:
            parts = self._upload_parts(key, upload, fh, size, extra)
            done = self._complete(key, upload, parts)
            if done.value == "done":
                won = True
            elif done.value == "gone" or done.ambiguous:  # the completion may have been ours
                writer = self._writer(key)
                won = writer == token or (sole and writer is not None)
                if writer is None and done.value == "gone":
                    raise StoreFlaky(
                        f"{self.options.label}: {what}: the multipart upload vanished before it "
                        "completed (a lifecycle rule aborting uploads?); try again"
                    )
            return won
        finally:
            if not won:
                self._abort(name, upload)

    def _upload_parts(
        self, key: str, upload: str, fh: BinaryIO, size: int, extra: dict[str, str]
    ) -> builtins.list[dict[str, Any]]:
        """Send the parts of ``fh`` in order; their numbers, ETags (and checksums)."""
        part = max(self.options.part, -(-size // MAX_PARTS))
        part = -(-part // MiB) * MiB
        parts: builtins.list[dict[str, Any]] = []
        for number, start in enumerate(range(0, size, part), 1):
            length = min(part, size - start)

            def send(number: int = number, start: int = start, length: int = length) -> Any:
                return self.client.upload_part(
                    Bucket=self.bucket, Key=self.base + key, UploadId=upload,
                    PartNumber=number, Body=FilePart(fh, start, length), ContentLength=length,
                    **extra,
                )  # fmt: skip

            answer = self._call("UploadPart", f"create {key} (part {number})", send).value
            entry = {"PartNumber": number, "ETag": answer["ETag"]}
            if "ChecksumCRC32" in answer:
                entry["ChecksumCRC32"] = answer["ChecksumCRC32"]
            parts.append(entry)
        return parts

    def _complete(self, key: str, upload: str, parts: builtins.list[dict[str, Any]]) -> Sent[str]:
        """``CompleteMultipartUpload`` with ``If-None-Match: *``: done, exists or gone."""

        def send() -> str:
            try:
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=self.base + key, UploadId=upload, IfNoneMatch="*",
                    MultipartUpload={"Parts": parts},
                )  # fmt: skip
            except self._errors as exc:
                code, status = error_code(exc)
                if status == 412:
                    return "exists"
                if code == "NoSuchUpload":
                    return "gone"
                raise
            return "done"

        return self._call("CompleteMultipartUpload", f"create {key}", send)

    def _abort(self, name: str, upload: str) -> None:
        """Drop an unfinished upload (one try: a bucket lifecycle rule sweeps what is left)."""
        self.stats.add("AbortMultipartUpload")
        with contextlib.suppress(*self._errors):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)

    # -- reading -------------------------------------------------------------------------------

    def _head(self, key: str) -> dict[str, Any] | None:
        """``HeadObject`` of ``key``: its answer, or None if absent."""

        def head() -> dict[str, Any] | None:
            try:
                answer: dict[str, Any] = self.client.head_object(
                    Bucket=self.bucket, Key=self.base + key
                )
            except self._errors as exc:
                if _absent(exc):
                    return None
                raise
            return answer

        return self._call("HeadObject", f"exists {key}", head).value

    def _writer(self, key: str) -> str | None:
        """The ``ciflow-writer`` token of the value under ``key`` (None if absent)."""
        answer = self._head(key)
        return None if answer is None else answer.get("Metadata", {}).get(WRITER)

    def _body(self, key: str) -> Any:
        """``GetObject``'s streaming body of ``key``, or None if absent."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.base + key)
        except self._errors as exc:
            if _absent(exc):
                return None
            raise
        return answer["Body"]

    def _download(self, key: str, fh: BinaryIO, path: Path) -> bool:
        """One attempt of `get_to_file`: ``fh`` rewritten from the start; False if absent."""
        body = self._body(key)
        if body is None:
            return False
        with contextlib.closing(body):
            try:
                fh.seek(0)
                fh.truncate()
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            for chunk in body.iter_chunks(CHUNK):
                try:
                    fh.write(chunk)
                except OSError as exc:
                    raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return True


def _rewound(fh: BinaryIO) -> BinaryIO:
    fh.seek(0)
    return fh


def _absent(exc: Exception) -> bool:
    """A 404 about the key (a missing bucket is an error, not an absent key)."""
    code, status = error_code(exc)
    return status == 404 and code != "NoSuchBucket"


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except UsageError:
        return False
    return True
