"""The contract every store backend keeps, as a reusable test class.

Run a backend through it by subclassing with a ``Test`` name and giving a ``store`` fixture::

    class TestRedisStore(StoreContract):
        @pytest.fixture
        def store(self) -> Iterator[Store]:
            with RedisStore("redis://localhost/15") as s:
                yield s

        def other_client(self, store: Store) -> Store:  # optional: a second connection
            return RedisStore(store.url)

The fixture must give an empty store. Tests assert behaviour; the only timings are generous
upper bounds. Class attributes tune the suite for slow backends (e.g. ``blob_size``).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ciflow.errors import UsageError
from ciflow.stores import Store

__all__ = ["EVERY_OPERATION", "INVALID_KEYS", "StoreContract", "every_operation", "write_blob"]

MiB = 1 << 20

INVALID_KEYS = [
    "",
    "..",
    ".",
    "a/../b",
    "a/./b",
    "/abs",
    "/abs/key",
    "a b",
    "a\\b",
    "a//b",
    "a/",
    "a\nb",
    "a\n",
    "a/b\n",
    "a:b",
    "a*b",
    "ä",
]


def write_blob(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` in 1 MiB chunks; return their sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = rng.randbytes(min(MiB, left))
            digest.update(chunk)
            fh.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


#: the operation counts `every_operation` gives a store that counts each call once
EVERY_OPERATION = {
    "create": 2,
    "get": 1,
    "list": 1,
    "exists": 2,
    "delete": 1,
    "create_from_file": 1,
    "get_to_file": 1,
}


def every_operation(store: Store, tmp_path: Path) -> None:
    """Call each store operation (counts in `EVERY_OPERATION`), checking what it answers."""
    src = tmp_path / "src"
    src.write_bytes(b"x")
    assert store.create("a", b"1") and not store.create("a", b"2")
    assert store.get("a") == b"1" and store.list("") == ["a"] and store.exists("a")
    store.delete("a")
    assert store.create_from_file("b", src) and store.get_to_file("b", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == b"x" and not store.exists("a")


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


class StoreContract:
    """Behaviour every backend must show; subclasses provide the ``store`` fixture."""

    #: size of the streamed blob (bytes)
    blob_size: int = 50 * MiB
    #: most Python memory the streaming operations may allocate at once (tracemalloc peak)
    stream_peak_limit: int = 16 * MiB
    #: threads racing in the concurrency tests
    racers: int = 32
    #: generous upper bound for `wait` to notice a new key
    wait_bound: float = 5.0

    def other_client(self, store: Store) -> Store:
        """A second client of the same store (override for backends with connections)."""
        return store

    # -- create / get ---------------------------------------------------------------------

    def test_create_if_absent(self, store: Store) -> None:
        assert store.create("runs/r1/plan", b"first") is True
        assert store.create("runs/r1/plan", b"second") is False
        assert store.get("runs/r1/plan") == b"first"

    def test_create_seen_by_other_client(self, store: Store) -> None:
        other = self.other_client(store)
        assert store.create("k", b"v") is True
        assert other.create("k", b"w") is False
        assert other.get("k") == b"v"

    def test_get_absent_is_none(self, store: Store) -> None:
        assert store.get("nothing/here") is None
        store.create("some/key", b"x")
        assert store.get("some") is None
        assert store.get("some/key/deeper") is None
        assert store.get("some/ke") is None

    def test_binary_round_trip(self, store: Store) -> None:
        every_byte = bytes(range(256)) * 3 + b"\r\n\x00\x1a"
        assert store.create("bin/all", every_byte)
        assert store.get("bin/all") == every_byte

    def test_empty_value_is_not_absent(self, store: Store) -> None:
        assert store.create("empty", b"") is True
        assert store.get("empty") == b""
        assert store.create("empty", b"x") is False
        assert store.list("emp") == ["empty"]

    def test_key_characters(self, store: Store) -> None:
        key = "cache/mod_A-1.2/sha256=ab+cd@x/.hidden"
        assert store.create(key, b"v")
        assert store.get(key) == b"v"
        assert store.list("cache/") == [key]

    # -- exists -----------------------------------------------------------------------------

    def test_exists(self, store: Store) -> None:
        assert store.exists("e/key") is False
        assert store.create("e/key", b"") is True  # an empty value exists too
        assert store.exists("e/key") is True
        assert self.other_client(store).exists("e/key") is True
        for near in ("e", "e/ke", "e/key2", "e/key/deeper"):
            assert store.exists(near) is False, near
        store.delete("e/key")
        assert store.exists("e/key") is False
        assert store.create("e/key", b"again") and store.exists("e/key") is True

    def test_exists_counted(self, store: Store) -> None:
        store.create("c/k", b"v")
        total = store.stats.total
        store.exists("c/k")
        assert store.stats.total > total

    # -- list -------------------------------------------------------------------------------

    def test_list_by_prefix(self, store: Store) -> None:
        keys = [
            "runs/r1/claims/build/1",
            "runs/r1/claims/build-docs/1",
            "runs/r1/claims/test/1",
            "runs/r1/claims/test/2",
            "runs/r1/workers/0",
            "runs/r10/workers/0",
            "other",
        ]
        for k in reversed(keys):
            assert store.create(k, k.encode())
        assert store.list("runs/r1/claims/buil") == [
            "runs/r1/claims/build-docs/1",
            "runs/r1/claims/build/1",
        ]
        assert store.list("runs/r1/claims/build/") == ["runs/r1/claims/build/1"]
        assert store.list("runs/r1/claims/") == sorted(keys[:4])
        assert store.list("runs/r1/") == sorted(keys[:5])
        assert store.list("runs/r1") == sorted(keys[:6])
        assert store.list("") == sorted(keys)
        assert store.list("o") == ["other"]
        assert store.list("other") == ["other"]
        assert store.list("othe") == ["other"]
        assert store.list("other/") == []
        assert store.list("runs/r2/") == []
        assert store.list("nope") == []

    def test_list_empty_store(self, store: Store) -> None:
        assert store.list("") == []
        assert store.list("runs/") == []

    def test_list_nested(self, store: Store) -> None:
        store.create("a/b/c/d/e", b"1")
        store.create("a/b/x", b"2")
        store.create("a/y", b"3")
        assert store.list("a/") == ["a/b/c/d/e", "a/b/x", "a/y"]
        assert store.list("a/b/c") == ["a/b/c/d/e"]

    def test_list_odd_prefixes_find_nothing(self, store: Store) -> None:
        store.create("a/b", b"1")
        for prefix in ("../", "/", "a//", "a/../", "a b", "./a"):
            try:
                assert store.list(prefix) == [], prefix
            except UsageError:
                pass  # rejecting such a prefix is fine too

    # -- delete -----------------------------------------------------------------------------

    def test_delete(self, store: Store) -> None:
        store.create("leases/w1", b"1")
        store.create("leases/w2", b"2")
        store.delete("leases/w1")
        assert store.get("leases/w1") is None
        assert store.list("leases/") == ["leases/w2"]
        store.delete("leases/w1")  # absent is fine
        store.delete("never/was")
        assert store.create("leases/w1", b"again") is True
        assert store.get("leases/w1") == b"again"

    # -- invalid keys -------------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS)
    def test_invalid_keys_rejected(self, store: Store, key: str, tmp_path: Path) -> None:
        src = tmp_path / "src"
        src.write_bytes(b"x")
        calls: list[Callable[[], object]] = [
            lambda: store.create(key, b"x"),
            lambda: store.get(key),
            lambda: store.delete(key),
            lambda: store.exists(key),
            lambda: store.create_from_file(key, src),
            lambda: store.get_to_file(key, tmp_path / "dst"),
        ]
        for call in calls:
            with pytest.raises(UsageError, match="invalid store key"):
                call()
        assert not (tmp_path / "dst").exists()

    # -- streaming ---------------------------------------------------------------------------

    def test_large_blob_streamed(self, store: Store, tmp_path: Path) -> None:
        src = tmp_path / "blob.bin"
        sha = write_blob(src, self.blob_size, seed=1)
        tracemalloc.start()
        try:
            assert store.create_from_file("runs/r1/outputs/build.tar.zst", src) is True
            _, peak_up = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            dst = tmp_path / "out" / "blob.bin"
            dst.parent.mkdir()
            assert store.get_to_file("runs/r1/outputs/build.tar.zst", dst) is True
            _, peak_down = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert file_sha256(dst) == sha
        assert dst.stat().st_size == self.blob_size
        assert peak_up < self.stream_peak_limit, f"create_from_file held {peak_up} bytes"
        assert peak_down < self.stream_peak_limit, f"get_to_file held {peak_down} bytes"
        assert sorted(p.name for p in dst.parent.iterdir()) == ["blob.bin"]  # no temp left

    def test_create_from_file_if_absent(self, store: Store, tmp_path: Path) -> None:
        first, second = tmp_path / "first", tmp_path / "second"
        first.write_bytes(b"one")
        second.write_bytes(b"two")
        assert store.create_from_file("blob", first) is True
        assert store.create_from_file("blob", second) is False
        assert store.create("blob", b"three") is False
        assert store.get("blob") == b"one"

    def test_streamed_and_plain_interoperate(self, store: Store, tmp_path: Path) -> None:
        data = bytes(range(256)) * 1000
        store.create("plain", data)
        out = tmp_path / "plain.out"
        assert store.get_to_file("plain", out) is True
        assert out.read_bytes() == data
        src = tmp_path / "empty"
        src.write_bytes(b"")
        assert store.create_from_file("streamed-empty", src) is True
        assert store.get("streamed-empty") == b""

    def test_get_to_file_absent(self, store: Store, tmp_path: Path) -> None:
        dst = tmp_path / "dst"
        assert store.get_to_file("absent", dst) is False
        assert not dst.exists()
        assert list(tmp_path.iterdir()) == []

    def test_get_to_file_replaces_existing(self, store: Store, tmp_path: Path) -> None:
        dst = tmp_path / "dst"
        dst.write_bytes(b"old contents that are longer")
        store.create("k", b"new")
        assert store.get_to_file("k", dst) is True
        assert dst.read_bytes() == b"new"

    # -- wait ---------------------------------------------------------------------------------

    def test_wait_wakes_when_another_client_creates(self, store: Store) -> None:
        other = self.other_client(store)
        store.create("runs/r1/workers/0", b"w0")
        known = store.list("runs/r1/workers/")

        def register() -> None:
            time.sleep(0.05)
            other.create("runs/r1/workers/1", b"w1")

        thread = threading.Thread(target=register)
        start = time.monotonic()
        thread.start()
        try:
            keys = store.wait("runs/r1/workers/", known=known, timeout=30)
        finally:
            thread.join()
        assert time.monotonic() - start < self.wait_bound
        assert keys == ["runs/r1/workers/0", "runs/r1/workers/1"]

    def test_wait_returns_at_once_if_something_is_new(self, store: Store) -> None:
        store.create("q/a", b"")
        start = time.monotonic()
        assert store.wait("q/", known=(), timeout=30) == ["q/a"]
        assert time.monotonic() - start < self.wait_bound

    def test_wait_timeout_returns_current_list(self, store: Store) -> None:
        store.create("q/a", b"")
        store.create("other", b"")
        start = time.monotonic()
        assert store.wait("q/", known=["q/a"], timeout=0.2) == ["q/a"]
        elapsed = time.monotonic() - start
        assert 0.1 <= elapsed < self.wait_bound
        assert store.wait("none/", timeout=0.05) == []

    # -- stats --------------------------------------------------------------------------------

    def test_stats_counted(self, store: Store, tmp_path: Path) -> None:
        def count(op: str) -> int:
            return store.stats.counts.get(op, 0)

        before = {op: count(op) for op in ("create", "get", "list", "delete")}
        total = store.stats.total
        store.create("s/a", b"1")
        store.get("s/a")
        store.list("s/")
        store.delete("s/a")
        for op, n in before.items():
            assert count(op) > n, op
        src = tmp_path / "src"
        src.write_bytes(b"x")
        mid = store.stats.total
        store.create_from_file("s/b", src)
        store.get_to_file("s/b", tmp_path / "dst")
        assert store.stats.total > mid > total

    # -- concurrency --------------------------------------------------------------------------

    def test_racing_creates_have_one_winner(self, store: Store) -> None:
        n = self.racers
        clients = [self.other_client(store) for _ in range(n)]
        barrier = threading.Barrier(n)

        def race(i: int) -> bool:
            barrier.wait(timeout=30)
            return clients[i].create("runs/r1/claims/build/1", f"worker-{i}".encode())

        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(race, range(n)))
        assert results.count(True) == 1
        winner = results.index(True)
        assert store.get("runs/r1/claims/build/1") == f"worker-{winner}".encode()

    def test_racing_distinct_creates_all_land(self, store: Store) -> None:
        n = self.racers
        clients = [self.other_client(store) for _ in range(n)]
        barrier = threading.Barrier(n)

        def register(i: int) -> bool:
            barrier.wait(timeout=30)
            return clients[i].create(f"runs/r1/workers/{i:03d}", str(i).encode())

        with ThreadPoolExecutor(n) as pool:
            assert all(pool.map(register, range(n)))
        assert store.list("runs/r1/workers/") == [f"runs/r1/workers/{i:03d}" for i in range(n)]
        assert all(store.get(f"runs/r1/workers/{i:03d}") == str(i).encode() for i in range(n))

    def test_racing_create_and_delete_stay_consistent(self, store: Store) -> None:
        # Leases: holders delete and re-create one key; each create win is a fresh value.
        n = 8
        clients = [self.other_client(store) for _ in range(n)]
        barrier = threading.Barrier(n)

        def churn(i: int) -> int:
            barrier.wait(timeout=30)
            wins = 0
            for round_ in range(20):
                value = f"{i}:{round_}".encode()
                if clients[i].create("lease", value):
                    wins += 1
                    assert clients[i].get("lease") == value
                    clients[i].delete("lease")
            return wins

        with ThreadPoolExecutor(n) as pool:
            wins = sum(pool.map(churn, range(n)))
        assert wins >= 1
        assert store.get("lease") is None
