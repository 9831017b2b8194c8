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
