"""The in-memory store, ``memory://NAME``: the store contract, sharing by name, push `wait`."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_contract import EVERY_OPERATION, StoreContract, every_operation

from ciflow.errors import UsageError
from ciflow.stores import Store, StoreError, open_store, profile_for
from ciflow.testing.memory import MemoryStore

MiB = 1 << 20
_names = itertools.count()


def fresh_url() -> str:
    return f"memory://test-{next(_names)}"


@pytest.fixture
def store() -> Iterator[MemoryStore]:
    opened = open_store(fresh_url())
    assert isinstance(opened, MemoryStore)
    yield opened
    opened.clear()


class TestMemoryStoreContract(StoreContract):
    """The contract, with every client another `MemoryStore` of the same name."""

    blob_size = 8 * MiB  # the value lives in memory: the streaming peak counts it once

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        with open_store(fresh_url()) as opened:
            yield opened
            assert isinstance(opened, MemoryStore)
            opened.clear()

    def other_client(self, store: Store) -> Store:
        return open_store(store.url)


def test_stores_of_one_name_share_their_keys(store: MemoryStore) -> None:
    again = MemoryStore(store.url)
    other = MemoryStore(fresh_url())
    assert store.create("runs/1/plan", b"p") is True
    assert again.get("runs/1/plan") == b"p" and again.create("runs/1/plan", b"q") is False
    assert other.list("") == [] and other.create("runs/1/plan", b"o") is True
    assert store.get("runs/1/plan") == b"p"
    again.delete("runs/1/plan")
    assert store.exists("runs/1/plan") is False
    other.clear()


def test_wait_wakes_at_once_however_long_the_poll(store: MemoryStore) -> None:
    other = MemoryStore(store.url)
    store.poll = 60.0
    created = threading.Event()
    woke: list[float] = []

    def create() -> None:
        time.sleep(0.1)
        other.create("q/new", b"")
        woke.append(time.monotonic())
        created.set()

    thread = threading.Thread(target=create)
    thread.start()
    try:
        assert store.wait("q/", known=(), timeout=30, poll=60.0) == ["q/new"]
        returned = time.monotonic()
    finally:
        thread.join()
    assert created.is_set() and returned - woke[0] < 0.5
    assert store.wait("q/", known=["q/new"], timeout=0.05) == ["q/new"]  # times out


def test_a_key_cannot_also_be_a_folder(store: MemoryStore) -> None:
    assert store.create("a/b", b"1")
    with pytest.raises(StoreError, match="'a/b' is a value"):
        store.create("a/b/c", b"2")
    assert store.create("x/y/z", b"1")
    with pytest.raises(StoreError, match="already a folder of other keys"):
        store.create("x/y", b"2")
    store.delete("x/y/z")
    assert store.create("x/y", b"2") and store.list("") == ["a/b", "x/y"]


def test_stats_count_each_operation(store: MemoryStore, tmp_path: Path) -> None:
    every_operation(store, tmp_path)
    assert store.stats.counts == EVERY_OPERATION


def test_missing_source_is_a_store_error(store: MemoryStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot store"):
        store.create_from_file("k", tmp_path / "missing")
    assert store.exists("k") is False


def test_profile_and_urls() -> None:
    profile = profile_for("memory://x")
    assert profile.pushes is True and profile.poll <= 0.05 and profile.latency < 0.01
    assert open_store("memory://x", poll=0.5).poll == 0.5
    assert (
        MemoryStore("memory://").name == "" and MemoryStore("memory://a.b-c_d/").name == "a.b-c_d"
    )
    for bad in ("memory://a/b", "memory://a b", "file://x"):
        with pytest.raises(UsageError, match="memory://NAME"):
            MemoryStore(bad)
