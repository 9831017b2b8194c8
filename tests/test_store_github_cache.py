"""The ``github-cache://`` store against the emulator's cache service (network: 127.0.0.1 only)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from store_contract import INVALID_KEYS, file_sha256, write_blob

import ciflow.testing.emulator.http as emulator_module
from ciflow.errors import UsageError
from ciflow.stores import StoreError, StoreUnavailable, open_store
from ciflow.stores.github.cache import CACHE_VERSION, KEY_MAX, GitHubCacheStore
from ciflow.testing.emulator import CACHE_SERVICE, Faults, GitHubEmulator
from ciflow.testing.emulator import TwirpError as EmuTwirpError

MiB = 1 << 20
_ids = itertools.count()

_real_setup = emulator_module._Handler.setup


def _setup_nodelay(self: Any) -> None:
    _real_setup(self)
    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@pytest.fixture(scope="module", autouse=True)
def _nodelay() -> Iterator[None]:
    """Answer without the 40 ms Nagle/delayed-ACK stall of the emulator's split writes."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(emulator_module._Handler, "setup", _setup_nodelay)
        yield


class Opened:
    """Opens cache stores (each in its own namespace per test) and closes them."""

    def __init__(self, emu: GitHubEmulator) -> None:
        self.emu = emu
        self.ns = f"t{next(_ids)}"
        self.stores: list[GitHubCacheStore] = []

    def __call__(self, run: str = "run", job: str = "job", **kw: Any) -> GitHubCacheStore:
        store = GitHubCacheStore(f"github-cache://{self.ns}", env=self.emu.env(run, job), **kw)
        self.stores.append(store)
        return store


@pytest.fixture
def open_cache(emu: GitHubEmulator) -> Iterator[Opened]:
    opened = Opened(emu)
    yield opened
    for store in opened.stores:
        store.close()


def sleeper(on_sleep: Callable[[float], None] | None = None) -> tuple[list[float], Any]:
    delays: list[float] = []

    def sleep(delay: float) -> None:
        delays.append(delay)
        if on_sleep is not None:
            on_sleep(delay)

    return delays, sleep


def test_create_get_and_immutability(open_cache: Opened) -> None:
    store = open_cache()
    assert store.get("history/main") is None
    assert store.create("history/main", b"v1") is True
    assert store.create("history/main", b"v2") is False
    assert store.get("history/main") == b"v1"
    assert store.create("empty", b"") is True and store.get("empty") == b""
    every_byte = bytes(range(256)) * 3
    assert store.create("bin", every_byte) and store.get("bin") == every_byte


def test_entries_outlive_the_run(open_cache: Opened) -> None:
    assert open_cache(run="run-1", job="a").create("cache/mod/abc", b"result")
    later = open_cache(run="run-2", job="z")
    assert later.get("cache/mod/abc") == b"result"
    assert later.create("cache/mod/abc", b"other") is False


def test_exact_match_only(emu: GitHubEmulator, open_cache: Opened) -> None:
    store = open_cache()
    assert store.create("a/bc", b"bc")
    assert store.get("a/b") is None  # a prefix of a saved key is not a hit
    assert store.create("a/b", b"b") and store.get("a/b") == b"b" and store.get("a/bc") == b"bc"
    # an entry some other tool saved whose key starts with ours: the service prefix-matches it
    foreign = store.cache_key("x/y") + "extra"
    resp, _ = store.twirp.rpc("CreateCacheEntry", {"key": foreign, "version": CACHE_VERSION})
    store.blobs.put(resp["signed_upload_url"], b"no", {"x-ms-blob-type": "BlockBlob"}, "put")
    store.twirp.rpc(
        "FinalizeCacheEntryUpload", {"key": foreign, "version": CACHE_VERSION, "size_bytes": "2"}
    )
    emu.reset_calls()
    assert store.get("x/y") is None
    assert emu.calls == {"GetCacheEntryDownloadURL": 1}  # matched_key differed: no download


def test_other_versions_and_namespaces_are_separate(
    open_cache: Opened, emu: GitHubEmulator
) -> None:
    store = open_cache()
    key = store.cache_key("k")
    resp, _ = store.twirp.rpc("CreateCacheEntry", {"key": key, "version": "0" * 64})
    store.blobs.put(resp["signed_upload_url"], b"tar", {"x-ms-blob-type": "BlockBlob"}, "put")
    store.twirp.rpc(
        "FinalizeCacheEntryUpload", {"key": key, "version": "0" * 64, "size_bytes": "3"}
    )
    assert store.get("k") is None
    assert store.create("k", b"mine") and store.get("k") == b"mine"
    other = GitHubCacheStore("github-cache://", env=emu.env("run", "job"))
    try:
        assert other.cache_key("k") == "ciflow/k~"
        assert store.cache_key("k") == f"ciflow-{open_cache.ns}/k~"
    finally:
        other.close()


def test_streaming(open_cache: Opened, tmp_path: Path) -> None:
    store = open_cache()
    src = tmp_path / "blob"
    sha = write_blob(src, 9 * MiB + 7, seed=3)
    assert store.create_from_file("blob", src) is True
    assert store.create_from_file("blob", src) is False
    dst = tmp_path / "out" / "blob"
    assert store.get_to_file("blob", dst) is True
    assert file_sha256(dst) == sha
    assert sorted(p.name for p in dst.parent.iterdir()) == ["blob"]
    assert store.get_to_file("absent", tmp_path / "nothing") is False
    assert not (tmp_path / "nothing").exists()


def test_racing_creates_have_one_winner(open_cache: Opened) -> None:
    stores = [open_cache(job=f"job-{i}") for i in range(16)]
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> bool:
        barrier.wait(timeout=30)
        return stores[i].create("history/run-42", f"v{i}".encode())

    with ThreadPoolExecutor(len(stores)) as pool:
        results = list(pool.map(go, range(len(stores))))
    assert results.count(True) == 1
    assert stores[0].get("history/run-42") == f"v{results.index(True)}".encode()


def test_list_wait_and_delete_are_clear_errors(open_cache: Opened) -> None:
    store = open_cache()
    with pytest.raises(StoreError, match="cannot list keys") as info:
        store.list("history/")
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="cannot list keys"):
        store.wait("history/", timeout=0.1)
    store.create("k", b"v")
    with pytest.raises(StoreError, match="cannot delete 'k': cache entries are immutable"):
        store.delete("k")
    assert store.get("k") == b"v"


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys(open_cache: Opened, key: str, tmp_path: Path) -> None:
    store = open_cache()
    src = tmp_path / "src"
    src.write_bytes(b"x")
    for call in (
        lambda: store.create(key, b"x"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.create_from_file(key, src),
        lambda: store.get_to_file(key, tmp_path / "dst"),
    ):
        with pytest.raises(UsageError, match="invalid store key"):
            call()


def test_key_too_long(open_cache: Opened) -> None:
    store = open_cache()
    room = KEY_MAX - len(store.cache_key("k")) + 1
    assert store.create("k" * room, b"v") and store.get("k" * room) == b"v"
    with pytest.raises(UsageError, match="512"):
        store.create("k" * (room + 1), b"v")


def _answer(emu: GitHubEmulator, method: str, fn: Callable[..., dict[str, Any]]) -> Any:
    real = emu._rpcs[(CACHE_SERVICE, method)]
    emu._rpcs[(CACHE_SERVICE, method)] = fn
    return real


def test_write_denied_is_a_clear_error(emu: GitHubEmulator, open_cache: Opened) -> None:
    store = open_cache()

    def denied_ok_false(who: Any, req: Any) -> dict[str, Any]:
        return {"ok": False, "message": "cache write denied: token has no writable scopes"}

    def denied_403(who: Any, req: Any) -> dict[str, Any]:
        raise EmuTwirpError("permission_denied", "cache write denied for this scope")

    for answer in (denied_ok_false, denied_403):
        real = _answer(emu, "CreateCacheEntry", answer)
        try:
            with pytest.raises(StoreUnavailable, match="cache write denied for 'k'") as info:
                store.create("k", b"v")
        finally:
            _answer(emu, "CreateCacheEntry", real)
        assert "\n" not in str(info.value)
    assert store.get("k") is None


def test_ok_false_without_denial_means_exists(emu: GitHubEmulator, open_cache: Opened) -> None:
    store = open_cache()
    real = _answer(emu, "CreateCacheEntry", lambda who, req: {"ok": False})
    try:
        assert store.create("k", b"v") is False
    finally:
        _answer(emu, "CreateCacheEntry", real)


def test_retries_under_faults(emu: GitHubEmulator, open_cache: Opened, tmp_path: Path) -> None:
    delays, sleep = sleeper()
    store = open_cache(sleep=sleep, max_attempts=12)
    emu.faults = Faults(rate=0.3, kinds=["429", "500", "503", "drop"], seed=3, blobs=True)
    for i in range(10):
        assert store.create(f"k/{i}", f"v{i}".encode()) is True
        assert store.create(f"k/{i}", b"again") is False
    for i in range(10):
        assert store.get(f"k/{i}") == f"v{i}".encode()
    src = tmp_path / "src"
    src.write_bytes(os.urandom(5 * MiB))
    assert store.create_from_file("big", src)
    assert store.get_to_file("big", tmp_path / "dst") and (tmp_path / "dst").read_bytes() == (
        src.read_bytes()
    )
    emu.faults = Faults()
    assert len(delays) >= 5 and store.stats.counts["retries"] == len(delays)


def test_lost_finalize_answer_is_a_success(emu: GitHubEmulator, open_cache: Opened) -> None:
    delays, sleep = sleeper(lambda d: setattr(emu, "faults", Faults()))
    store = open_cache(sleep=sleep)
    emu.faults = Faults(rate=1.0, kinds=["drop_after"], methods=["FinalizeCacheEntryUpload"])
    assert store.create("k", b"v") is True  # the retry's 409 is our own finalization
    assert store.get("k") == b"v"
    assert store.stats.counts["FinalizeCacheEntryUpload"] == 2


def test_lost_create_answer_leaves_the_key_reserved(
    emu: GitHubEmulator, open_cache: Opened
) -> None:
    delays, sleep = sleeper(lambda d: setattr(emu, "faults", Faults()))
    store = open_cache(sleep=sleep)
    emu.faults = Faults(rate=1.0, kinds=["drop_after"], methods=["CreateCacheEntry"])
    assert store.create("k", b"v") is False  # documented: the service cannot release it
    assert store.get("k") is None


def test_retry_after_and_permanent_errors(emu: GitHubEmulator, open_cache: Opened) -> None:
    delays, sleep = sleeper(lambda d: setattr(emu, "faults", Faults()))
    store = open_cache(sleep=sleep)
    emu.faults = Faults(rate=1.0, kinds=["429"], retry_after=9, methods=["CreateCacheEntry"])
    assert store.create("k", b"v") is True
    assert delays == [9.0]
    with pytest.raises(StoreError) as info:  # a key only another client could send
        store.twirp.rpc("CreateCacheEntry", {"key": "a,b", "version": CACHE_VERSION})
    assert str(info.value) == (
        "github-cache store: CreateCacheEntry failed with HTTP 400 "
        "(invalid_argument: key must be at most 512 characters, no commas)"
    )


def test_configuration(emu: GitHubEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIONS_RESULTS_URL", raising=False)
    monkeypatch.delenv("ACTIONS_RUNTIME_TOKEN", raising=False)
    with pytest.raises(StoreUnavailable, match="github-cache:// store: ACTIONS_RESULTS_URL"):
        open_store("github-cache://")
    for name, value in emu.env("run", "job").items():
        monkeypatch.setenv(name, value)
    with open_store("github-cache://") as store:
        assert isinstance(store, GitHubCacheStore)
    with pytest.raises(UsageError, match="github-cache://NAMESPACE"):
        open_store("github-cache://a/b")


def test_api_calls(emu: GitHubEmulator, open_cache: Opened) -> None:
    store = open_cache()

    def calls(op: Callable[[], object]) -> dict[str, int]:
        emu.reset_calls()
        op()
        return {**emu.calls, **emu.blob_calls}

    assert calls(lambda: store.create("k", b"v")) == {
        "CreateCacheEntry": 1, "PutBlob": 1, "FinalizeCacheEntryUpload": 1,
    }  # fmt: skip
    assert calls(lambda: store.create("k", b"v")) == {"CreateCacheEntry": 1}
    assert calls(lambda: store.get("k")) == {"GetCacheEntryDownloadURL": 1, "GetBlob": 1}
    assert calls(lambda: store.get("absent")) == {"GetCacheEntryDownloadURL": 1}
    assert store.stats.counts["blob-upload"] == 1 and store.stats.counts["get"] == 2


def test_exists_asks_for_the_download_url_only(emu: GitHubEmulator, open_cache: Opened) -> None:
    store = open_cache()
    assert store.create("k", b"v")
    emu.reset_calls()
    assert store.exists("k") is True and store.exists("absent") is False
    assert {**emu.calls, **emu.blob_calls} == {"GetCacheEntryDownloadURL": 2}
    assert store.stats.counts["exists"] == 2
