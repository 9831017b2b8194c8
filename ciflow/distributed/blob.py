"""Result records: a checksummed header line plus the module's JSON result, zstd-compressed.

A module's result travels through the store as one record (docs/architecture.md, "Results")::

    CIFLOW-RESULT 1 <H> <zsize> <zsha>\\n    line 1: magic, format, checksums
    {"schema_version":1,"module":...}\\n    line 2: the `ResultHeader`, one line of JSON
    <zstd frame>                           the payload (the result's JSON bytes), one zstd frame

- ``H`` (64 hex) is the SHA-256 of line 1 without its `` <H>`` field, followed by line 2 with its
  newline. It covers the magic, the format number, the payload checksum fields and the header.
- ``zsize``/``zsha`` are the size and SHA-256 of the compressed payload: every byte after line 2.
- The header records the uncompressed payload's ``payload_sha256`` and ``payload_size``, checked
  again after decompression (end to end). ``payload_size`` also bounds the decompression, so a zstd
  bomb is an error, never an out-of-memory.

So a flipped byte anywhere, a truncation at any point, appended bytes or a wrong magic are always
detected, and the message says which part is damaged. Frozen for every future format: line 1
starts ``CIFLOW-RESULT <format> <H>`` and ``H`` covers line 2 as above, so a reader can tell a
damaged record from one written by a newer ciflow before it interprets anything else.

Errors, all `StoreError` subclasses (exit code 1)::

    BlobError            a record that cannot be used; catch this for all three
    ├── CorruptBlob      damaged record: delete it and rerun the module
    ├── NewerBlob        intact, written by a newer ciflow (record format or header schema)
    └── BlobTooLarge     intact, but the payload is over the caller's ``max_payload``

`NewerBlob` and `BlobTooLarge` are siblings of `CorruptBlob`, not subclasses: the record is
intact, and "delete it and rerun" would be the wrong advice.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..stores.base import StoreError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "FORMAT_VERSION",
    "MAGIC",
    "SCHEMA_VERSION",
    "BlobError",
    "BlobTooLarge",
    "CorruptBlob",
    "NewerBlob",
    "OutputRef",
    "ResultHeader",
    "decode_result",
    "encode_result",
]

#: first bytes of every result record
MAGIC = b"CIFLOW-RESULT"
#: the record layout this code writes and reads
FORMAT_VERSION = 1
#: the `ResultHeader` schema this code writes and reads
SCHEMA_VERSION = 1
#: refuse to decompress payloads larger than this by default (512 MiB)
DEFAULT_MAX_PAYLOAD = 512 * 1024 * 1024

# the frozen part of line 1 (any format), and line 1 of format 1 exactly
_LINE1 = re.compile(rb"CIFLOW-RESULT ([0-9]{1,9}) ([0-9a-f]{64})((?: [\x21-\x7e]+)*)\n")
_LINE1_V1_REST = re.compile(rb" (0|[1-9][0-9]{0,15}) ([0-9a-f]{64})")
_LINE1_MAX = 512
_SHA256_HEX = r"^[0-9a-f]{64}$"


class BlobError(StoreError):
    """A result record that cannot be used; the message names its key and what is wrong."""


class CorruptBlob(BlobError):
    """A result record is damaged: checksum mismatch, truncation, trailing bytes, bad magic."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"result blob {key} is corrupted: {reason}; delete it and rerun the module"
        )


class NewerBlob(BlobError):
    """An intact record written by a newer ciflow (newer record format or header schema)."""

    def __init__(self, key: str, what: str, found: int, known: int) -> None:
        self.key = key
        self.found = found
        self.known = known
        super().__init__(
            f"result blob {key} was written by a newer ciflow ({what} {found}, this ciflow "
            f"reads {known}); upgrade ciflow on every runner of the run"
        )


class BlobTooLarge(BlobError):
    """An intact record whose payload is larger than the caller allows."""

    def __init__(self, key: str, size: int, limit: int) -> None:
        self.key = key
        self.size = size
        self.limit = limit
        super().__init__(
            f"result blob {key} holds a {_human(size)} payload, over the {_human(limit)} limit; "
            "return a smaller result (ship large data as declared outputs instead)"
        )


class OutputRef(BaseModel):
    """One archive of a module's declared outputs, stored under its own key."""

    model_config = ConfigDict(frozen=True)

    key: str = Field(min_length=1)
    sha256: str = Field(pattern=_SHA256_HEX)
    size: int = Field(ge=0)
    #: bytes of the regular files inside (0: not recorded); restores refuse more
    unpacked: int = Field(default=0, ge=0)


class ResultHeader(BaseModel):
    """What a result record says about the module run that produced it.

    ``payload_sha256`` and ``payload_size`` describe the uncompressed payload; `encode_result`
    fills them in, whatever the caller passed. Unknown fields are ignored when reading, so a
    newer ciflow may add optional fields without bumping ``schema_version``.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    module: str
    attempt: int = Field(ge=1)
    worker: str
    slot: int | None = None
    outcome: str
    started: float
    finished: float
    duration: float = Field(ge=0)
    error: str | None = None
    skip_reason: str | None = None
    payload_sha256: str = ""
    payload_size: int = Field(default=0, ge=0)
    outputs: list[OutputRef] = Field(default_factory=list)
    #: content digest of the declared outputs (`ciflow.cache.digest.outputs_digest`), if known
    outputs_digest: str | None = None
    #: the result cache's verdict for this module ("hit", "miss: ..."; None: not cached)
    cache: str | None = None
    #: seconds a cache hit saved
    saved: float = Field(default=0.0, ge=0)
    #: the CI run attempt whose worker wrote it (GitHub's ``GITHUB_RUN_ATTEMPT``), if known
    run_attempt: int | None = Field(default=None, ge=1)


def encode_result(header: ResultHeader, payload: bytes, *, level: int = 3) -> bytes:
    """Return the record for ``header`` and ``payload`` (the result's JSON bytes)."""
    import pyzstd

    header = header.model_copy(
        update={
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
            "payload_size": len(payload),
        }
    )
    compressed = pyzstd.compress(payload, level)
    rest = b" %d %s" % (len(compressed), hashlib.sha256(compressed).hexdigest().encode())
    return _assemble(FORMAT_VERSION, rest, header.model_dump_json().encode(), compressed)


def decode_result(
    data: bytes, *, key: str, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> tuple[ResultHeader, bytes]:
    """Check and unpack a record read from store key ``key`` (the key is used in messages).

    Returns the header and the payload, or raises `CorruptBlob`, `NewerBlob` or `BlobTooLarge`
    (all `BlobError`). Decompresses at most ``max_payload`` bytes; never returns a payload other
    than the one that was encoded.
    """
    data = bytes(data)
    fmt, rest, header_line, compressed = _split(data, key)
    if fmt > FORMAT_VERSION:
        raise NewerBlob(key, "result format", fmt, FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise CorruptBlob(key, f"unknown result format {fmt}")
    match = _LINE1_V1_REST.fullmatch(rest)
    if match is None:  # only a buggy writer gets here: `rest` is covered by the header checksum
        raise CorruptBlob(key, f"malformed first line fields {_preview(rest)}")
    zsize, zsha = int(match.group(1)), match.group(2).decode()
    if len(compressed) < zsize:
        raise CorruptBlob(key, f"truncated: the payload has {len(compressed)} of its {zsize} bytes")
    if len(compressed) > zsize:
        raise CorruptBlob(key, f"{len(compressed) - zsize} unexpected bytes after the payload")
    got = hashlib.sha256(compressed).hexdigest()
    if got != zsha:
        raise CorruptBlob(key, f"payload checksum mismatch ({_mismatch(zsha, got)})")
    header = _parse_header(header_line, key)
    if header.payload_size > max_payload:
        raise BlobTooLarge(key, header.payload_size, max_payload)
    payload = _decompress(compressed, header.payload_size, key)
    if len(payload) != header.payload_size:
        raise CorruptBlob(
            key,
            f"payload size mismatch (expected {header.payload_size} bytes, got {len(payload)})",
        )
    got = hashlib.sha256(payload).hexdigest()
    if got != header.payload_sha256:
        raise CorruptBlob(
            key, f"payload checksum mismatch ({_mismatch(header.payload_sha256, got)})"
        )
    return header, payload


def _assemble(fmt: int, rest: bytes, header_line: bytes, compressed: bytes) -> bytes:
    """Build a record from its parts (``rest``: line 1 after the header checksum field)."""
    digest = _header_digest(fmt, rest, header_line)
    return b"%s %d %s%s\n%s\n%s" % (MAGIC, fmt, digest.encode(), rest, header_line, compressed)


def _header_digest(fmt: int, rest: bytes, header_line: bytes) -> str:
    h = hashlib.sha256(b"%s %d%s\n" % (MAGIC, fmt, rest))
    h.update(header_line + b"\n")
    return h.hexdigest()


def _split(data: bytes, key: str) -> tuple[int, bytes, bytes, memoryview]:
    """Check line 1 and the header checksum; return format, line-1 rest, header line, payload."""
    if not data:
        raise CorruptBlob(key, "the record is empty")
    prefix = MAGIC + b" "
    if not data.startswith(prefix):
        if prefix.startswith(data):
            raise CorruptBlob(key, f"truncated after {len(data)} bytes")
        raise CorruptBlob(key, f"bad magic {_preview(data)} (not a ciflow result record)")
    end = data.find(b"\n", 0, _LINE1_MAX)
    if end < 0:
        if len(data) < _LINE1_MAX:
            raise CorruptBlob(key, f"truncated after {len(data)} bytes, inside the first line")
        raise CorruptBlob(key, "malformed first line (no end)")
    match = _LINE1.fullmatch(data, 0, end + 1)
    if match is None:
        raise CorruptBlob(key, f"malformed first line {_preview(data[: end + 1])}")
    fmt, expected, rest = int(match.group(1)), match.group(2).decode(), match.group(3)
    header_end = data.find(b"\n", end + 1)
    if header_end < 0:
        raise CorruptBlob(key, f"truncated after {len(data)} bytes, inside the header")
    header_line = data[end + 1 : header_end]
    got = _header_digest(fmt, rest, header_line)
    if got != expected:
        raise CorruptBlob(key, f"header checksum mismatch ({_mismatch(expected, got)})")
    return fmt, rest, header_line, memoryview(data)[header_end + 1 :]


def _parse_header(line: bytes, key: str) -> ResultHeader:
    """Validate the header line (intact per its checksum, so errors mean a buggy writer)."""
    try:
        raw: Any = json.loads(line)
    except (ValueError, RecursionError):
        raise CorruptBlob(key, "header is not valid JSON") from None
    if not isinstance(raw, dict):
        raise CorruptBlob(key, "header is not a JSON object")
    version = raw.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise NewerBlob(key, "result schema", version, SCHEMA_VERSION)
    try:
        header = ResultHeader.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "header"
        raise CorruptBlob(key, f"invalid header ({loc}: {first.get('msg')})") from None
    if header.schema_version != SCHEMA_VERSION:
        raise CorruptBlob(key, f"unknown result schema {header.schema_version}")
    return header


def _decompress(compressed: memoryview, size: int, key: str) -> bytes:
    """Decompress exactly one zstd frame, producing at most ``size + 1`` bytes."""
    import pyzstd

    decompressor = pyzstd.ZstdDecompressor()
    try:
        payload = decompressor.decompress(compressed, size + 1)
        if len(payload) <= size and not decompressor.eof and not decompressor.needs_input:
            payload += decompressor.decompress(b"", size + 1 - len(payload))
    except (pyzstd.ZstdError, EOFError, ValueError) as exc:
        raise CorruptBlob(key, f"payload does not decompress ({exc})") from None
    if len(payload) > size:
        raise CorruptBlob(key, f"payload is larger than the {size} bytes its header records")
    if not decompressor.eof:
        raise CorruptBlob(key, "the payload's zstd frame is incomplete")
    if decompressor.unused_data:
        raise CorruptBlob(key, "unexpected data after the payload's zstd frame")
    return payload


def _mismatch(expected: str, got: str) -> str:
    """``expected 3f2a…, got 9c1b…``, long enough to show where the two differ."""
    first = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), 0)
    n = max(12, first + 4)

    def cut(s: str) -> str:
        return s[:n] + "…" if len(s) > n else s

    return f"expected {cut(expected)}, got {cut(got)}"


def _preview(data: bytes, n: int = 24) -> str:
    return repr(data[:n]) + ("…" if len(data) > n else "")


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
