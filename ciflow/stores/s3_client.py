"""The ``s3://`` store's client: URL options, the boto3 client, and what its errors mean.

`S3Options.parse` reads ``s3://BUCKET[/PREFIX][?option=value&...]``; `make_client` builds one
thread-safe botocore client with its own retries off (`ciflow.stores.s3` retries every call
through the shared `Transport.retrying` loop); `failure` sorts an exception of a call into a
`Retry` (transient: worth another attempt) or the final one-line error to raise; `FilePart` is
one part of a file for a multipart upload, read in small pieces so a part never sits in memory.

boto3 is imported here, when a store is opened, and nowhere else: ``ciflow --help`` never loads
it, and a machine without it gets "install ciflow[s3]".
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import parse_qsl, urlsplit

from .._version import __version__
from ..errors import CiflowError, UsageError
from .base import StoreDenied, StoreError, StoreUnavailable, check_key
from .transport import RETRY_STATUS, TIMEOUT, Retry, retry_after_seconds

__all__ = ["FilePart", "S3Options", "error_code", "failure", "load_boto", "make_client"]

MiB = 1 << 20
#: the smallest part S3 accepts (all but the last), and the most parts of one upload
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
#: connections the client keeps open (the transport's pool size)
POOL = 32

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_OPTIONS = ("endpoint", "region", "addressing", "timeout", "page", "part")
#: error codes that say the credentials (or the clock signing with them) were refused
DENIED = frozenset(
    {
        "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
        "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed", "AccountProblem",
        "AllAccessDisabled", "InvalidSecurity", "403",
    }
)  # fmt: skip
#: error codes worth another attempt whatever their status; the first group was not applied
REJECTED = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
     "TooManyRequestsException", "ConditionalRequestConflict", "OperationAborted"}
)  # fmt: skip
TRANSIENT = REJECTED | {"RequestTimeout", "InternalError", "ServiceUnavailable"}


def load_boto() -> Any:
    """The ``boto3`` module; `UsageError` naming the extra when it is not installed."""
    try:
        import boto3  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError(
            "the s3:// store needs boto3: install ciflow[s3] (pip install 'ciflow[s3]')"
        ) from None
    return boto3


@dataclass(frozen=True)
class S3Options:
    """What an ``s3://`` URL says: where the store is and how to talk to it."""

    bucket: str
    #: the key prefix every store key goes under: ``''`` or ``'PREFIX/'``
    base: str
    #: the service's URL (None: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, config, AWS)
    endpoint: str | None = None
    region: str | None = None
    #: ``path`` or ``virtual`` bucket addressing (None: botocore's choice or the config file)
    addressing: str | None = None
    #: the longest one call keeps retrying transient failures, seconds (None: attempts only)
    timeout: float | None = None
    #: keys per listing page (ListObjectsV2 ``MaxKeys``, at most 1000)
    page: int = 1000
    #: bytes per multipart part; files larger than one part are uploaded in parts
    part: int = 8 * MiB

    @property
    def label(self) -> str:
        """How messages name the store: ``s3 store s3://BUCKET/PREFIX``."""
        return f"s3 store s3://{self.bucket}/{self.base}".rstrip("/")

    @classmethod
    def parse(cls, url: str) -> S3Options:
        """The options of ``url``; `UsageError` naming the right form otherwise."""
        parts = urlsplit(url)
        form = "use s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME&timeout=SECONDS]"
        if parts.scheme != "s3" or not _BUCKET.fullmatch(parts.netloc):
            raise UsageError(f"invalid store URL {url!r}: {form}")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_key(prefix)
            except UsageError:
                raise UsageError(
                    f"invalid store URL {url!r}: the prefix must be '/'-separated names of "
                    "[A-Za-z0-9._=@+-]"
                ) from None
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(query) - set(_OPTIONS))
        if unknown:
            raise UsageError(
                f"invalid store URL {url!r}: unknown option {unknown[0]!r}; "
                f"s3:// takes {', '.join(_OPTIONS)}"
            )
        try:
            return cls(parts.netloc, f"{prefix}/" if prefix else "", **_values(query))
        except ValueError as exc:
            raise UsageError(f"invalid store URL {url!r}: {exc}") from None


def _values(query: dict[str, str]) -> dict[str, Any]:
    """The typed options of a URL's query; ValueError naming a bad one."""
    out: dict[str, Any] = {}
    for name in ("endpoint", "region", "addressing"):
        if query.get(name):
            out[name] = query[name]
    if out.get("endpoint") and urlsplit(out["endpoint"]).scheme not in ("http", "https"):
        raise ValueError("endpoint must be an http:// or https:// URL")
    if out.get("addressing") not in (None, "path", "virtual"):
        raise ValueError("addressing must be path or virtual")
    if "timeout" in query:
        out["timeout"] = float(query["timeout"])
        if not out["timeout"] > 0:
            raise ValueError("timeout must be a positive number of seconds")
    if "page" in query:
        out["page"] = int(query["page"])
        if not 1 <= out["page"] <= 1000:
            raise ValueError("page must be 1 to 1000 keys")
    if "part" in query:
        out["part"] = int(float(query["part"]) * MiB)
        if out["part"] < MIN_PART:
            raise ValueError("part must be at least 5 (MiB), the smallest part S3 accepts")
    return out


def make_client(options: S3Options) -> Any:
    """One botocore S3 client: the AWS chain for endpoint, region and credentials, no retries.

    Endpoint: ``?endpoint=``, else what botocore finds itself (``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL``, ``endpoint_url`` in the config file, else AWS). Credentials and
    region: botocore's chain (variables, ``AWS_PROFILE``, config and credentials files, SSO,
    web identity, container and instance roles).
    """
    boto3 = load_boto()
    from botocore.config import Config  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError  # type: ignore[import-untyped]

    connect = TIMEOUT[0] if options.timeout is None else min(TIMEOUT[0], options.timeout)
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},  # the transport retries
        connect_timeout=connect,
        read_timeout=TIMEOUT[1],
        max_pool_connections=POOL,
        user_agent_extra=f"ciflow/{__version__}",
        s3={"addressing_style": options.addressing} if options.addressing else None,
    )
    try:
        session = boto3.session.Session(botocore_session=_botocore_session())
        client = session.client(
            "s3", endpoint_url=options.endpoint, region_name=options.region, config=config
        )
    except (BotoCoreError, ValueError) as exc:
        raise UsageError(f"{options.label}: cannot set up the S3 client: {_text(exc)}") from None
    model = client.meta.service_model
    for operation in ("PutObject", "CompleteMultipartUpload"):
        if "IfNoneMatch" not in model.operation_model(operation).input_shape.members:
            raise UsageError(
                f"{options.label}: boto3 {boto3.__version__} cannot send If-None-Match on "
                f"{operation}, which ciflow creates with: pip install -U 'ciflow[s3]'"
            )
    return client


_loader: list[Any] = []
_loader_lock = threading.Lock()


def _botocore_session() -> Any:
    """A new botocore session (its own credentials and settings) sharing one data loader.

    The loader holds the parsed service model and endpoint rules, which a new session would
    read again (about 80 of the 130 ms a client costs); the first session's loader is kept.
    """
    import botocore.session  # type: ignore[import-untyped]

    core = botocore.session.Session()
    with _loader_lock:
        if not _loader:
            _loader.append(core.get_component("data_loader"))
    core.register_component("data_loader", _loader[0])
    return core


def error_code(exc: BaseException) -> tuple[str, int]:
    """A botocore ``ClientError``'s error code and HTTP status (``('', 0)`` for others)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _text(exc: BaseException) -> str:
    """An exception as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def failure(exc: Exception, options: S3Options, what: str, endpoint: str) -> Retry | CiflowError:
    """What a failed call means: a `Retry`, or the one-line error to raise (naming the fix).

    ``what`` names the call (``create runs/r1/plan``), ``endpoint`` the service's URL.
    """
    from botocore import exceptions as boto_errors

    if isinstance(exc, boto_errors.ClientError):
        return _client_error(exc, options, what, endpoint)
    name = type(exc).__name__
    if isinstance(exc, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
        return StoreDenied(
            f"{options.label}: {what}: {_text(exc)}; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where a role provides credentials"
        )
    if isinstance(exc, boto_errors.SSLError):
        return StoreUnavailable(
            f"{options.label}: {what}: {_text(exc)}; check the endpoint's certificate "
            "(AWS_CA_BUNDLE) or use its http:// URL"
        )
    if isinstance(exc, boto_errors.EndpointConnectionError | boto_errors.ConnectTimeoutError):
        return Retry(f"cannot connect ({name})", ambiguous=False)
    if isinstance(exc, boto_errors.ConnectionError | boto_errors.HTTPClientError):
        return Retry(f"connection failed ({name})")
    broken = (boto_errors.IncompleteReadError, boto_errors.ChecksumError,
              boto_errors.FlexibleChecksumError)  # fmt: skip
    if isinstance(exc, broken):
        return Retry(f"the answer broke off ({name})")
    if isinstance(exc, boto_errors.CredentialRetrievalError | boto_errors.TokenRetrievalError):
        return StoreDenied(f"{options.label}: {what}: {_text(exc)}; check the AWS profile")
    return StoreError(f"{options.label}: {what}: {_text(exc)}")


def _client_error(exc: Any, options: S3Options, what: str, endpoint: str) -> Retry | CiflowError:
    code, status = error_code(exc)
    message = " ".join(str(exc.response.get("Error", {}).get("Message", "")).split())
    said = f"{code}: {message}" if message and message != code else code or f"HTTP {status}"
    if code in TRANSIENT or (status in RETRY_STATUS and code not in DENIED):
        headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        after = retry_after_seconds(headers.get("retry-after"))
        limited = code in REJECTED or status == 429
        return Retry(f"HTTP {status} {said}", after, ambiguous=not limited)
    if code in DENIED or status == 403:
        clock = "; this machine's clock is off" if code == "RequestTimeTooSkewed" else ""
        return StoreDenied(
            f"{options.label}: {what}: the service refused the request ({said}){clock}; "
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and "
            f"that they may read and write bucket {options.bucket!r}"
        )
    if code == "NoSuchBucket":
        return StoreUnavailable(
            f"{options.label}: bucket {options.bucket!r} does not exist at {endpoint}; "
            f"create it (aws s3 mb s3://{options.bucket}) or fix the URL or AWS_ENDPOINT_URL"
        )
    return StoreError(f"{options.label}: {what}: {said}")


class FilePart:
    """Bytes ``start`` to ``start + size`` of an open file, as a readable, seekable body.

    botocore reads a body in pieces (to hash and checksum it, then to send it) and seeks back
    to 0 between, so one part of a 1 GiB file costs a few MiB of memory, not the part's size.
    """

    def __init__(self, fh: BinaryIO, start: int, size: int) -> None:
        self.fh, self.start, self.size, self.pos = fh, start, size, 0

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self.pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self.fh.seek(self.start + self.pos)
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return self.size
