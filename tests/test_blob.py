"""Result records: round trips, every kind of corruption detected, newer versions, size limits."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
import pyzstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciflow.distributed.blob import (
    DEFAULT_MAX_PAYLOAD,
    SCHEMA_VERSION,
    BlobError,
    BlobTooLarge,
    CorruptBlob,
    NewerBlob,
    OutputRef,
    ResultHeader,
    _assemble,
    decode_result,
    encode_result,
)
from ciflow.errors import CiflowError
from ciflow.stores.base import StoreError

KEY = "runs/r1/results/build/1"


def header(**changes: object) -> ResultHeader:
    fields: dict[str, object] = {
        "module": "build",
        "attempt": 1,
        "worker": "runner-3",
        "slot": 3,
        "outcome": "succeeded",
        "started": 1_700_000_000.25,
        "finished": 1_700_000_012.75,
        "duration": 12.5,
    }
    fields.update(changes)
    return ResultHeader.model_validate(fields)


def payload_parts(payload: bytes) -> tuple[bytes, bytes]:
    """The format-1 line-1 rest and the compressed payload, as encode_result builds them."""
    compressed = pyzstd.compress(payload)
    rest = b" %d %s" % (len(compressed), hashlib.sha256(compressed).hexdigest().encode())
    return rest, compressed


def assemble(header_obj: ResultHeader | bytes, compressed: bytes, fmt: int = 1) -> bytes:
    """A record with valid checksums around whatever header and payload bytes are given."""
    line = header_obj if isinstance(header_obj, bytes) else header_obj.model_dump_json().encode()
    rest = b" %d %s" % (len(compressed), hashlib.sha256(compressed).hexdigest().encode())
    return _assemble(fmt, rest, line, compressed)


SMALL = encode_result(header(), b'{"path":"dist/app.whl","version":"1.2.0"}')


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "payload",
    [b"null", b"", b'{"path":"dist/app.whl"}', json.dumps(list(range(50_000))).encode()],
    ids=["null", "empty", "object", "large"],
)
def test_round_trip(payload: bytes) -> None:
    h = header(outputs=[OutputRef(key="runs/r1/outputs/build/1/0", sha256="a" * 64, size=12)])
    got_header, got_payload = decode_result(encode_result(h, payload), key=KEY)
    assert got_payload == payload
    assert got_header.payload_size == len(payload)
    assert got_header.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert got_header.model_dump(exclude={"payload_sha256", "payload_size"}) == h.model_dump(
        exclude={"payload_sha256", "payload_size"}
    )


def test_all_header_fields_round_trip() -> None:
    h = header(
        attempt=3,
        slot=None,
        outcome="failed",
        error="command failed with exit code 2: pytest",
        skip_reason=None,
        outputs=[
            OutputRef(key="k/0", sha256="0" * 64, size=0),
            OutputRef(key="k/1", sha256="f" * 64, size=1 << 40),
        ],
    )
    got, _ = decode_result(encode_result(h, b"null"), key=KEY)
    assert got.slot is None
    assert got.error == "command failed with exit code 2: pytest"
    assert [o.size for o in got.outputs] == [0, 1 << 40]
    assert got.schema_version == SCHEMA_VERSION
    # a record of an older ciflow with a field this one dropped still reads
    old = json.loads(h.model_dump_json())
    old["upstream_outputs"] = {"make": [old["outputs"][0]]}
    assert ResultHeader.model_validate(old).outputs == h.outputs


def test_encode_fills_in_payload_checksum_and_size() -> None:
    h = header(payload_sha256="b" * 64, payload_size=999)
    got, payload = decode_result(encode_result(h, b"[1,2,3]"), key=KEY)
    assert payload == b"[1,2,3]"
    assert got.payload_size == 7
    assert got.payload_sha256 == hashlib.sha256(b"[1,2,3]").hexdigest()


def test_wire_format_is_magic_header_line_then_zstd() -> None:
    first, header_line, compressed = SMALL.split(b"\n", 2)
    assert first.startswith(b"CIFLOW-RESULT 1 ")
    assert json.loads(header_line)["module"] == "build"
    assert pyzstd.decompress(compressed) == b'{"path":"dist/app.whl","version":"1.2.0"}'


def test_payloads_are_compressed() -> None:
    payload = json.dumps([{"name": "x", "value": i % 7} for i in range(10_000)]).encode()
    assert len(encode_result(header(), payload)) < len(payload) / 10


def test_errors_are_store_errors_with_exit_code_1() -> None:
    for cls in (CorruptBlob, NewerBlob, BlobTooLarge):
        assert issubclass(cls, BlobError)
        assert issubclass(cls, StoreError)
        assert issubclass(cls, CiflowError)
        assert cls.exit_code == 1
    assert not issubclass(NewerBlob, CorruptBlob)
    assert not issubclass(BlobTooLarge, CorruptBlob)


# --------------------------------------------------------------------------- corruption


def decode_corrupt(data: bytes) -> CorruptBlob:
    with pytest.raises(CorruptBlob) as info:
        decode_result(data, key=KEY)
    message = str(info.value)
    assert message.startswith(f"result blob {KEY} is corrupted: ")
    assert message.endswith("; delete it and rerun the module")
    assert "\n" not in message
    return info.value


def test_every_single_byte_flip_is_detected() -> None:
    for i in range(len(SMALL)):
        for mask in (0x01, 0x20, 0x80, 0xFF):
            damaged = bytearray(SMALL)
            damaged[i] ^= mask
            decode_corrupt(bytes(damaged))


def test_every_truncation_is_detected() -> None:
    for n in range(len(SMALL)):
        decode_corrupt(SMALL[:n])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=st.binary(max_size=300),
    module=st.text(min_size=1, max_size=20),
    data=st.data(),
)
def test_any_flip_or_truncation_is_detected(
    payload: bytes, module: str, data: st.DataObject
) -> None:
    blob = encode_result(header(module=module), payload)
    assert decode_result(blob, key=KEY)[1] == payload
    i = data.draw(st.integers(0, len(blob) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    damaged = bytearray(blob)
    damaged[i] ^= mask
    decode_corrupt(bytes(damaged))
    decode_corrupt(blob[: data.draw(st.integers(0, len(blob) - 1), label="cut")])


@settings(max_examples=100, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64))
def test_appended_garbage_is_detected(garbage: bytes) -> None:
    error = decode_corrupt(SMALL + garbage)
    assert f"{len(garbage)} unexpected bytes after the payload" in error.reason


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    decode_corrupt(data)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"CIFLOW", "truncated after 6 bytes"),
        (b"PK\x03\x04" + SMALL, "bad magic"),
        (b"\x28\xb5\x2f\xfd" + SMALL[4:], "bad magic"),
        (SMALL.replace(b"CIFLOW-RESULT 1 ", b"CIFLOW-RESULT x ", 1), "malformed first line"),
    ],
    ids=["empty", "short", "zip", "zstd", "version"],
)
def test_wrong_magic_and_short_data(data: bytes, reason: str) -> None:
    assert reason in decode_corrupt(data).reason


def test_damaged_header_is_named() -> None:
    damaged = SMALL.replace(b'"attempt":1', b'"attempt":2', 1)
    assert decode_corrupt(damaged).reason.startswith("header checksum mismatch (expected ")


def test_damaged_payload_is_named() -> None:
    damaged = bytearray(SMALL)
    damaged[-3] ^= 0x01
    reason = decode_corrupt(bytes(damaged)).reason
    assert reason.startswith("payload checksum mismatch (expected ")
    expected, got = reason.removeprefix("payload checksum mismatch (expected ").split(", got ")
    assert expected.rstrip("…") != got.rstrip("…)")


def test_truncated_payload_is_named() -> None:
    reason = decode_corrupt(SMALL[:-5]).reason
    assert reason.startswith("truncated: the payload has ")


def test_payload_that_does_not_match_its_header_is_refused() -> None:
    # a buggy writer: intact checksums around a payload the header does not describe
    h = header(payload_sha256=hashlib.sha256(b"other").hexdigest(), payload_size=5)
    reason = decode_corrupt(assemble(h, pyzstd.compress(b"12345"))).reason
    assert reason.startswith("payload checksum mismatch")
    h = header(payload_sha256=hashlib.sha256(b"123").hexdigest(), payload_size=3)
    assert "payload" in decode_corrupt(assemble(h, pyzstd.compress(b"12345"))).reason


def test_invalid_header_with_intact_checksum_is_refused() -> None:
    _, compressed = payload_parts(b"null")
    assert "not valid JSON" in decode_corrupt(assemble(b"{nope", compressed)).reason
    assert "not a JSON object" in decode_corrupt(assemble(b"[1]", compressed)).reason
    assert "invalid header" in decode_corrupt(assemble(b'{"module":"x"}', compressed)).reason
    zero = header().model_dump()
    zero["schema_version"] = 0
    line = json.dumps(zero).encode()
    assert "unknown result schema 0" in decode_corrupt(assemble(line, compressed)).reason


def test_not_a_zstd_payload_is_refused() -> None:
    h = header(payload_sha256=hashlib.sha256(b"null").hexdigest(), payload_size=4)
    assert "does not decompress" in decode_corrupt(assemble(h, b"null")).reason
    two_frames = pyzstd.compress(b"nu") + pyzstd.compress(b"ll")
    assert "after the payload's zstd frame" in decode_corrupt(assemble(h, two_frames)).reason


# --------------------------------------------------------------------------- versions


def test_newer_schema_version_asks_for_an_upgrade() -> None:
    blob = encode_result(header(schema_version=SCHEMA_VERSION + 1), b"null")
    with pytest.raises(NewerBlob) as info:
        decode_result(blob, key=KEY)
    message = str(info.value)
    assert message.startswith(f"result blob {KEY} was written by a newer ciflow")
    assert f"result schema {SCHEMA_VERSION + 1}" in message
    assert "upgrade ciflow" in message


def test_newer_schema_with_unknown_fields_asks_for_an_upgrade() -> None:
    raw = {"schema_version": 7, "module": "build", "new_required_thing": {"a": 1}}
    _, compressed = payload_parts(b"null")
    with pytest.raises(NewerBlob, match="result schema 7"):
        decode_result(assemble(json.dumps(raw).encode(), compressed), key=KEY)


def test_newer_record_format_asks_for_an_upgrade() -> None:
    blob = _assemble(2, b" some-future-field", b"anything at all", b"\x00\x01")
    with pytest.raises(NewerBlob, match=r"newer ciflow \(result format 2, this ciflow reads 1\)"):
        decode_result(blob, key=KEY)


def test_damaged_format_number_is_corruption_not_newer() -> None:
    damaged = SMALL.replace(b"CIFLOW-RESULT 1 ", b"CIFLOW-RESULT 3 ", 1)
    assert decode_corrupt(damaged).reason.startswith("header checksum mismatch")


def test_unknown_header_fields_are_ignored() -> None:
    raw = header(payload_sha256=hashlib.sha256(b"null").hexdigest(), payload_size=4).model_dump()
    raw["added_later"] = "optional"
    got, payload = decode_result(
        assemble(json.dumps(raw).encode(), pyzstd.compress(b"null")), key=KEY
    )
    assert payload == b"null"
    assert got.module == "build"


# --------------------------------------------------------------------------- limits


def test_payload_over_the_limit_is_refused() -> None:
    payload = b"x" * 10_000
    blob = encode_result(header(), payload)
    assert decode_result(blob, key=KEY, max_payload=10_000)[1] == payload
    with pytest.raises(BlobTooLarge, match=r"9\.8 KiB payload, over the 9\.8 KiB limit") as info:
        decode_result(blob, key=KEY, max_payload=9_999)
    assert info.value.size == 10_000


def test_default_limit_is_512_mib() -> None:
    assert DEFAULT_MAX_PAYLOAD == 512 * 1024 * 1024
    h = header(payload_sha256="0" * 64, payload_size=DEFAULT_MAX_PAYLOAD + 1)
    with pytest.raises(BlobTooLarge, match="512.0 MiB limit"):
        decode_result(assemble(h, pyzstd.compress(b"")), key=KEY)


def zstd_bomb(size: int) -> bytes:
    """A zstd frame of ``size`` zero bytes, built without holding them in memory."""
    compressor = pyzstd.ZstdCompressor(3)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_zstd_bomb_is_an_error_not_an_oom() -> None:
    bomb = zstd_bomb(1 << 30)  # 1 GiB of zeros in a few tens of KiB
    assert len(bomb) < 1 << 20
    h = header(payload_sha256=hashlib.sha256(b"small").hexdigest(), payload_size=1000)
    blob = assemble(h, bomb)
    tracemalloc.start()
    try:
        error = decode_corrupt(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "payload is larger than the 1000 bytes its header records" in error.reason
    assert peak < 8 << 20


def test_honest_bomb_header_is_refused_before_decompressing() -> None:
    bomb = zstd_bomb(64 << 20)
    h = header(payload_sha256="0" * 64, payload_size=64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(BlobTooLarge):
            decode_result(assemble(h, bomb), key=KEY, max_payload=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
