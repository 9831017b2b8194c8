"""The result store: publishing, the marker before a non-success, and records that lie."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from ciflow.distributed.blob import BlobError, OutputRef, ResultHeader, encode_result
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.results import ResultCache, publish_result
from ciflow.model.outcome import ModuleRecord, Outcome
from ciflow.stores import open_store
from ciflow.stores.base import Store, StoreError

KEYS = RunKeys("run-1")


@pytest.fixture
def store() -> Store:
    return open_store(f"memory://results-{secrets.token_hex(4)}")


def _header(module: str, **changes: object) -> ResultHeader:
    fields: dict[str, object] = {
        "module": module, "attempt": 1, "worker": "s0-h-1", "outcome": "succeeded",
        "started": 0.0, "finished": 1.0, "duration": 1.0,
    }  # fmt: skip
    fields.update(changes)
    return ResultHeader.model_validate(fields)


def test_a_success_is_known_from_the_listing_and_a_failure_from_its_marker(
    store: Store, tmp_path: Path
) -> None:
    ok = ModuleRecord("a", outcome=Outcome.SUCCEEDED, result=b"1")
    bad = ModuleRecord("b", outcome=Outcome.FAILED, error="boom")
    for record in (ok, bad):
        assert publish_result(store, KEYS, record, attempt=1, worker="w", slot=0, workdir=tmp_path)
    assert KEYS.marker("b") in store.list(KEYS.results)  # written before the result
    assert KEYS.marker("a") not in store.list(KEYS.results)
    cache = ResultCache(store, KEYS)
    cache.refresh()
    before = store.stats.counts.get("get", 0)
    assert cache.outcome("a") is Outcome.SUCCEEDED
    assert store.stats.counts.get("get", 0) == before  # a success costs no download
    assert cache.outcome("b") is Outcome.FAILED
    again = ModuleRecord("a", outcome=Outcome.SUCCEEDED, result=b"2")
    assert not publish_result(store, KEYS, again, attempt=2, worker="w", slot=0, workdir=tmp_path)


def test_a_result_whose_header_names_another_module_is_refused(store: Store) -> None:
    store.create(KEYS.result("deploy"), encode_result(_header("build"), b"null"))
    with pytest.raises(BlobError, match="is the result of module 'build', not 'deploy'"):
        ResultCache(store, KEYS).load("deploy")


@pytest.mark.parametrize(
    "key",
    ["runs/other-run/outputs/make/0001", "runs/run-1/outputs/other/0001", "runs/run-1/plan"],
)
def test_outputs_pointing_outside_the_run_and_module_are_refused(store: Store, key: str) -> None:
    ref = OutputRef(key=key, sha256="0" * 64, size=1)
    store.create(KEYS.result("make"), encode_result(_header("make", outputs=[ref]), b"null"))
    with pytest.raises(BlobError, match="outside runs/run-1/outputs/make/"):
        ResultCache(store, KEYS).load("make")


def test_a_result_that_was_listed_but_vanished_is_a_clear_error(store: Store) -> None:
    cache = ResultCache(store, KEYS)
    cache.note([KEYS.marker("gone"), KEYS.result("gone")])
    with pytest.raises(StoreError, match="was listed but cannot be read"):
        cache.outcome("gone")


def test_a_corrupted_result_fails_its_module_and_the_rest_of_the_run_is_read(
    tmp_path: Path,
) -> None:
    from ciflow.distributed.results import read_run

    store = open_store(f"file://{tmp_path / 'store'}")
    for name in ("a", "b", "c"):
        record = ModuleRecord(name, outcome=Outcome.SUCCEEDED, result=b'"%s"' % name.encode())
        publish_result(store, KEYS, record, attempt=1, worker="w", slot=0, workdir=tmp_path)
    blob = tmp_path / "store" / "runs" / "run-1" / "results" / "b"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte on disk, as a bad disk or a copy makes it
    blob.write_bytes(bytes(data))
    result = read_run(store, KEYS, ["a", "b", "c", "d"])
    states = {r.name: r.state for r in result.records}
    assert states == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "missing"}
    error = result.records[1].error or ""
    assert error.startswith("its result record is corrupted: ") and "results/b" in error
    assert len(result.warnings) == 1 and result.warnings[0].startswith("module 'b': its result")
    assert result.exit_code == 1 and result.verdict == "FAILED"


def test_a_definition_error_named_by_its_worker_is_one_for_the_whole_run(
    tmp_path: Path,
) -> None:
    from ciflow.distributed.messages import Done, encode
    from ciflow.distributed.results import read_run

    store = open_store(f"file://{tmp_path / 'store'}")
    bad = ModuleRecord("a", outcome=Outcome.FAILED, error="returned str, not int")
    publish_result(store, KEYS, bad, attempt=1, worker="w", slot=0, workdir=tmp_path)
    assert read_run(store, KEYS, ["a"]).exit_code == 1  # no worker said why yet
    done = Done(worker="w", exit_code=2, at=0.0, definition_errors=["a"])
    store.create(KEYS.done_of("w"), encode(done))
    result = read_run(store, KEYS, ["a"])
    assert result.records[0].definition_error and result.exit_code == 2


def test_the_unpacked_size_is_recorded_with_the_outputs_and_bounds_their_restore(
    tmp_path: Path,
) -> None:
    from ciflow.distributed.archive import ArchiveError

    store = open_store(f"file://{tmp_path / 'store'}")
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "out" / "a.txt").write_bytes(b"x" * 1000)
    record = ModuleRecord("make", outcome=Outcome.SUCCEEDED, result=b"null")
    publish_result(store, KEYS, record, attempt=1, worker="w", slot=0, workdir=work,
                   outputs=["out/*"])  # fmt: skip
    header = ResultCache(store, KEYS).load("make")
    assert [ref.unpacked for ref in header.outputs] == [1000]
    assert ResultCache(store, KEYS).restore_outputs("make", tmp_path / "a", ["out/*"]) == 1
    # the same archive under a result that recorded fewer bytes: refused, nothing restored
    small = header.outputs[0].model_copy(update={"unpacked": 10})
    store.delete(KEYS.result("make"))
    smaller = header.model_copy(update={"outputs": [small]})
    store.create(KEYS.result("make"), encode_result(smaller, b"null"))
    with pytest.raises(ArchiveError, match="10"):
        ResultCache(store, KEYS).restore_outputs("make", tmp_path / "b", ["out/*"])
    assert not (tmp_path / "b" / "out" / "a.txt").exists()
