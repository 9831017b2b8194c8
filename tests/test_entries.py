"""Cache entries in a store: first writer wins, corrupt or planted entries are refused."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ciflow.cache.entries import EntryStore
from ciflow.cache.key import KeyParts
from ciflow.distributed.blob import CorruptBlob
from ciflow.stores.file import FileStore

PARTS = KeyParts(module="m", code="c", spec="s", platform="any")


def test_concurrent_writers_of_one_key_first_wins_and_both_go_on(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def write(n: int) -> None:
        entries = EntryStore(FileStore(f"file://{tmp_path}"))
        barrier.wait()
        wins.append(entries.write(PARTS, b'"%d"' % n, 1.0, None, "-"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    entry = EntryStore(store).read("m", PARTS.key())
    assert entry is not None and entry.data in {b'"%d"' % n for n in range(8)}
    (marker,) = store.list("cache/1/m/keys/")
    assert marker.endswith("=" + ".".join(entry.product))  # the marker names the winner's


def test_a_corrupt_or_foreign_entry_is_refused(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    entries = EntryStore(store)
    assert entries.read("m", PARTS.key()) is None
    entries.write(PARTS, b"1", 1.0, None, "-")
    key = f"cache/1/m/data/{PARTS.key()}"
    raw = store.get(key)
    assert raw is not None
    store.delete(key)
    store.create(key, raw[:-1] + b"x")
    with pytest.raises(CorruptBlob):
        entries.read("m", PARTS.key())
    other = KeyParts(module="other", code="c", spec="s", platform="any")
    entries.write(other, b"2", 1.0, None, "-")
    store.create(
        f"cache/1/m/data/{other.key()}", store.get(f"cache/1/other/data/{other.key()}") or b""
    )
    with pytest.raises(ValueError, match="belongs to module 'other'"):
        entries.read("m", other.key())
    entries.drop("m", PARTS.key())
    assert entries.read("m", PARTS.key()) is None and entries.marker("m", PARTS.key()) is None


def test_last_parts_is_the_newest_entry_of_the_module(tmp_path: Path) -> None:
    entries = EntryStore(FileStore(f"file://{tmp_path}"))
    assert entries.last_parts("m") is None
    entries.write(PARTS, b"1", 1.0, None, "-")
    newer = KeyParts(module="m", code="c2", spec="s", platform="any")
    entries.write(newer, b"1", 1.0, None, "-")
    assert entries.last_parts("m") == newer
    assert entries.marker("m", newer.key()) == entries.marker("m", PARTS.key())
