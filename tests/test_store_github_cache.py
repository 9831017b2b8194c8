"""The ``github-cache://`` store against the emulator's cache service (network: 127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import node_steps
from store_contract import INVALID_KEYS, file_sha256, write_blob

import ciflow.testing.emulator.http as emulator_module
from ciflow.distributed.archive import pack_outputs
from ciflow.distributed.restore import unpack_outputs
from ciflow.errors import UsageError
from ciflow.stores import StoreError, StoreUnavailable, open_store
from ciflow.stores.github.cache import (
    CACHE_VERSION,
    KEY_MAX,
    TOOLKIT_COMPRESSION,
    GitHubCacheStore,
    toolkit_version,
)
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

    def __call__(
        self, run: str = "run", job: str = "job", *, ref: str | None = None, **kw: Any
    ) -> GitHubCacheStore:
        env = self.emu.env(run, job, ref=ref, base_ref=kw.pop("base_ref", None))
        store = GitHubCacheStore(f"github-cache://{self.ns}", env=env, **kw)
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


# -- newest_key, restore keys, scopes ------------------------------------------------------------
def _lookup(store: GitHubCacheStore, key: str, restore: list[str]) -> dict[str, Any]:
    body = {"key": key, "restore_keys": restore, "version": CACHE_VERSION}
    resp, _ = store.twirp.rpc("GetCacheEntryDownloadURL", body)
    return resp


def test_newest_key_asks_the_service_without_listing(
    emu: GitHubEmulator, open_cache: Opened
) -> None:
    store = open_cache()
    for key in ("parts/20250101-a", "parts/20250102-b", "keys/k1=r.o", "parts/20250103-c"):
        assert store.create(key, b"v")
    emu.reset_calls()
    assert store.newest_key("parts/") == "parts/20250103-c"
    assert emu.calls == {"GetCacheEntryDownloadURL": 1} and emu.blob_calls == {}
    assert store.newest_key("parts/20250102") == "parts/20250102-b"
    assert store.newest_key("keys/k1=") == "keys/k1=r.o"
    assert store.newest_key("keys/k2=") is None and store.newest_key("nothing/") is None
    assert store.newest_key("") == "parts/20250103-c"  # the whole namespace
    assert store.stats.counts["newest_key"] == 6
    other_ns = GitHubCacheStore("github-cache://elsewhere", env=emu.env("run", "job"))
    try:
        assert other_ns.newest_key("parts/") is None  # namespaces do not see each other
    finally:
        other_ns.close()
    with pytest.raises(UsageError, match="invalid key prefix"):
        store.newest_key("parts,x")


def test_newest_key_is_the_last_created_not_the_greatest(open_cache: Opened) -> None:
    store = open_cache()
    assert store.create("h/b", b"1") and store.create("h/a", b"2")
    assert store.newest_key("h/") == "h/a"  # documented: the service orders by creation time


def test_newest_key_ignores_a_foreign_match(open_cache: Opened) -> None:
    store = open_cache()
    assert store.create("h/1", b"v")
    foreign = f"{store.prefix}h/2-no-tilde"  # our version, but no key of ours
    resp, _ = store.twirp.rpc("CreateCacheEntry", {"key": foreign, "version": CACHE_VERSION})
    store.blobs.put(resp["signed_upload_url"], b"x", {"x-ms-blob-type": "BlockBlob"}, "put")
    store.twirp.rpc(
        "FinalizeCacheEntryUpload", {"key": foreign, "version": CACHE_VERSION, "size_bytes": "1"}
    )
    assert store.newest_key("h/") is None  # the service's newest match is not a store key


def test_default_newest_key_is_the_greatest_listed_key() -> None:
    with open_store("memory://newest-key") as store:
        assert store.newest_key("h/") is None
        for key in ("h/2", "h/1", "other/9"):
            store.create(key, b"v")
        assert store.newest_key("h/") == "h/2" and store.newest_key("") == "other/9"


@pytest.mark.parametrize("required", [False, True])
def test_exact_lookups_send_the_key_as_restore_key(
    emu: GitHubEmulator, open_cache: Opened, monkeypatch: pytest.MonkeyPatch, required: bool
) -> None:
    monkeypatch.setattr(emu, "require_restore_keys", required)
    store = open_cache()
    assert store.create("k", b"v") and store.create("h/1", b"v")
    key = store.cache_key("k")
    # a lookup without restore keys: a hit, unless the service wants them
    assert _lookup(store, key, [])["ok"] is (not required)
    assert _lookup(store, key, [key])["matched_key"] == key
    assert store.get("k") == b"v" and store.exists("k") and store.newest_key("h/") == "h/1"
    assert store.get("absent") is None and not store.exists("absent")


def test_entries_are_scoped_by_branch(emu: GitHubEmulator, open_cache: Opened) -> None:
    main, feature = open_cache(job="m"), open_cache(job="f", ref="feature")
    other = open_cache(job="o", ref="refs/heads/other")
    assert main.create("shared", b"main") and feature.create("mine", b"feature")
    assert feature.get("shared") == b"main"  # a branch reads the default branch's entries
    assert main.get("mine") is None and other.get("mine") is None  # not the reverse
    assert feature.create("shared", b"shadow") is True  # create-once holds per branch
    assert feature.get("shared") == b"shadow" and main.get("shared") == b"main"
    assert feature.create("shared", b"again") is False
    assert main.create("h/1", b"v") and feature.create("h/0", b"v") and main.create("h/2", b"v")
    assert feature.newest_key("h/") == "h/0"  # its own branch first, though main's is newer
    assert main.newest_key("h/") == "h/2" and other.newest_key("h/") == "h/2"
    pull = open_cache(job="p", ref="refs/pull/7/merge", base_ref="feature")
    assert pull.get("mine") == b"feature" and pull.newest_key("h/") == "h/0"  # base, then main
    assert pull.create("mine", b"pr") and feature.get("mine") == b"feature"


# -- archives for the official toolkit ----------------------------------------------------------


def _tree(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: file bytes and mode, link targets, empty folders."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_file():
            out[rel] = ("file", path.read_bytes(), path.stat().st_mode & 0o777)
        elif not any(path.iterdir()):
            out[rel] = ("empty dir",)
    return out


def _workspace(root: Path) -> Path:
    (root / "out" / "sub").mkdir(parents=True)
    (root / "out" / "empty").mkdir()
    (root / "out" / "a.txt").write_text("hello\n")
    (root / "out" / "sub" / "blob.bin").write_bytes(os.urandom(300_000))
    (root / "out" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "out" / "run.sh").chmod(0o755)
    os.symlink("a.txt", root / "out" / "link")
    (root / "not-an-output.txt").write_text("stays home")
    return root


def test_toolkit_version_is_what_the_official_client_computes(tmp_path: Path) -> None:
    steps = [{"paths": ["out"]}, {"paths": ["dist/*.whl", "~/.cache/pip"]}]
    got = node_steps("version.mjs", steps, {}, tmp_path)
    assert [g["compression"] for g in got] == [TOOLKIT_COMPRESSION] * 2  # zstd is installed
    assert [g["version"] for g in got] == [toolkit_version(s["paths"]) for s in steps]
    assert toolkit_version(["out"]) == hashlib.sha256(b"out|zstd-without-long|1.0").hexdigest()
    assert toolkit_version(["out"], windows_only=True) == (
        hashlib.sha256(b"out|zstd-without-long|windows-only|1.0").hexdigest()
    )
    for bad in ("out", [], [""]):
        with pytest.raises(UsageError, match="toolkit cache paths"):
            toolkit_version(bad)  # type: ignore[arg-type]


def test_official_client_restores_an_archive_ciflow_stored(
    emu: GitHubEmulator, open_cache: Opened, tmp_path: Path
) -> None:
    ws = _workspace(tmp_path / "ws")
    info = pack_outputs(ws, ["out"], tmp_path / "out.tar.zst")
    store = open_cache()
    assert store.create_archive("outputs/build-1", info.path, ["out"]) is True
    assert store.create_archive("outputs/build-1", info.path, ["out"]) is False
    assert store.get("outputs/build-1") is None  # a raw value is another entry
    key = store.cache_key("outputs/build-1")
    env = emu.env("run-2", "restore")
    one = [{"op": "restore", "key": key, "paths": ["out"]}]
    exact = node_steps("cache.mjs", one, env, tmp_path / "a")
    steps = [
        {"op": "restore", "key": f"{store.prefix}outputs/build-2~",
         "restoreKeys": [f"{store.prefix}outputs/"], "paths": ["out"]},
        {"op": "restore", "key": key, "paths": ["other"]},  # another version: a miss
    ]  # fmt: skip
    prefix, miss = node_steps("cache.mjs", steps, env, tmp_path / "b")
    assert exact == [key] and prefix == key and miss is None
    for restored in (tmp_path / "a", tmp_path / "b"):
        assert _tree(restored / "out") == _tree(ws / "out") != {}
        assert sorted(p.name for p in restored.iterdir()) == ["_t", "out"]


def test_ciflow_reads_an_archive_the_official_client_saved(
    emu: GitHubEmulator, open_cache: Opened, tmp_path: Path
) -> None:
    ws = _workspace(tmp_path / "ws")
    store = open_cache()
    key = store.cache_key("outputs/node")
    save = [{"op": "save", "key": key, "paths": ["out"]}]
    saved = node_steps("cache.mjs", save, emu.env("r", "j"), ws)
    assert saved[0] > 0
    dst = tmp_path / "dl" / "node.tar.zst"
    assert store.get_archive_to_file("outputs/node", dst, ["other"]) is False
    assert not dst.exists() and store.get("outputs/node") is None
    assert store.get_archive_to_file("outputs/node", dst, ["out"]) is True
    assert store.stats.counts["get_archive_to_file"] == 2
    fresh = tmp_path / "fresh"
    unpack_outputs(dst, fresh, expected_sha256=None, allowed=["out"])
    assert _tree(fresh) == {k: v for k, v in _tree(ws).items() if k.startswith("out/")}


def test_create_archive_wants_a_zstd_file(open_cache: Opened, tmp_path: Path) -> None:
    store = open_cache()
    plain = tmp_path / "plain.tar"
    plain.write_bytes(b"not zstd")
    with pytest.raises(UsageError, match="not zstd-compressed"):
        store.create_archive("k", plain, ["out"])
    with pytest.raises(StoreError, match="cannot store"):
        store.create_archive("k", tmp_path / "missing", ["out"])
    with pytest.raises(UsageError, match="toolkit cache paths"):
        store.create_archive("k", plain, "out")
    assert store.get_archive_to_file("k", tmp_path / "x", ["out"]) is False
