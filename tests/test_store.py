"""The folder store: the store contract, plus races between real processes and error messages."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from store_contract import EVERY_OPERATION, StoreContract, every_operation

from ciflow.stores import Store, StoreError, StoreUnavailable, open_store
from ciflow.stores.file import LOCK_DIR, FileStore

PROCESSES = 32
BIG = 4 << 20
ROUNDS = 20  # keys every racer also claims in turn, each a new race


class TestFileStoreContract(StoreContract):
    """The contract, with every client a separate `FileStore` on one folder."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        with FileStore(f"file://{tmp_path / 'store'}") as store:
            yield store

    def other_client(self, store: Store) -> Store:
        return FileStore(store.url)


class TestFileStoreContractWithoutHardLinks(TestFileStoreContract):
    """The contract again on a file system that refuses hard links (the lock fallback)."""

    blob_size = 8 << 20

    @pytest.fixture(autouse=True)
    def _no_links(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def refuse(src: object, dst: object, **_: object) -> None:
            raise OSError(errno.EPERM, "Operation not permitted", str(dst))

        monkeypatch.setattr(os, "link", refuse)


# -- real processes racing ------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import errno, hashlib, json, os, random, sys, time
    from pathlib import Path
    from ciflow.stores.file import FileStore

    url, sync, i, big = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    ROUNDS = int(sys.argv[6])
    if sys.argv[5] == "lock":  # a file system without hard links: the lock fallback
        def refuse(src, dst, **kw):
            raise OSError(errno.EPERM, "Operation not permitted", dst)
        os.link = refuse
    store = FileStore(url)

    def value(tag, size):
        body = tag.encode() + b":" + random.Random(tag).randbytes(size)
        return hashlib.sha256(body).hexdigest().encode() + b"\\n" + body

    mine, winner = value(f"worker-{i}", big), value(f"claim-{i}", 64 << 10)
    (sync / f"ready-{i}").touch()
    while not (sync / "go").exists():
        time.sleep(0.001)
    won = store.create("runs/r1/claims/build/1", winner)
    registered = store.create(f"runs/r1/workers/{i:02d}", mine)
    many = [store.create(f"runs/r2/claims/test/{j}", f"{i}".encode()) for j in range(ROUNDS)]
    print(json.dumps({"i": i, "won": won, "registered": registered, "many": many}))
    """
)


@dataclass
class Race:
    """What 32 processes racing on one folder did, and what a reader saw meanwhile."""

    store: FileStore
    results: list[dict[str, object]]
    reads: int = 0
    bad_reads: list[str] = field(default_factory=list)


def _intact(data: bytes) -> bool:
    digest, _, body = data.partition(b"\n")
    return hashlib.sha256(body).hexdigest().encode() == digest


@pytest.fixture(scope="module", params=["link", "lock"])
def race(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Race:
    """Start 32 processes, release them at once, and read every value while they write.

    ``link`` publishes with hard links; ``lock`` is a file system without them (the fallback).
    """
    mode: str = request.param
    tmp = tmp_path_factory.mktemp(f"race-{mode}")
    sync = tmp / "sync"
    sync.mkdir()
    store = FileStore(f"file://{tmp / 'store'}")
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, store.url, str(sync), str(i), str(BIG), mode]
            + [str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(PROCESSES)
    ]
    result = Race(store, [])
    done = threading.Event()

    def read_all() -> None:
        # Values never change once published, so each key is checked when first seen (while
        # the others are still being written) and once more after every racer has exited.
        reader = FileStore(store.url)
        seen: set[str] = set()
        while True:
            finished = done.is_set()
            for key in reader.list("runs/r1/"):
                if key in seen and not finished:
                    continue
                seen.add(key)
                data = reader.get(key)
                result.reads += 1
                if data is None:
                    result.bad_reads.append(f"{key}: listed but absent")
                elif not _intact(data):
                    result.bad_reads.append(f"{key}: {len(data)} bytes")
            if finished:
                return

    def reader_main() -> None:
        try:
            read_all()
        except Exception as exc:  # reported by the test, not lost in the thread
            result.bad_reads.append(f"reader failed: {exc!r}")

    reader = threading.Thread(target=reader_main)
    try:
        deadline = time.monotonic() + 60
        while len(list(sync.glob("ready-*"))) < PROCESSES:
            assert all(p.poll() is None for p in procs), "a racer died before the start"
            assert time.monotonic() < deadline, "racers did not start"
            time.sleep(0.01)
        reader.start()
        (sync / "go").touch()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            result.results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        done.set()
        if reader.ident is not None:  # started
            reader.join(timeout=60)
    return result


def test_processes_racing_on_one_key_have_one_winner(race: Race) -> None:
    winners = [r["i"] for r in race.results if r["won"]]
    assert len(winners) == 1
    data = race.store.get("runs/r1/claims/build/1")
    assert data is not None and _intact(data)
    assert data.partition(b"\n")[2].startswith(f"claim-{winners[0]}:".encode())


def test_processes_racing_on_many_keys_have_one_winner_each(race: Race) -> None:
    for j in range(ROUNDS):
        winners = [r["i"] for r in race.results if r["many"][j]]  # type: ignore[index]
        assert len(winners) == 1, f"key {j}: winners {winners}"
        assert race.store.get(f"runs/r2/claims/test/{j}") == str(winners[0]).encode()


def test_processes_registering_at_once_all_land(race: Race) -> None:
    assert all(r["registered"] for r in race.results)
    keys = race.store.list("runs/r1/workers/")
    assert keys == [f"runs/r1/workers/{i:02d}" for i in range(PROCESSES)]
    for i, key in enumerate(keys):
        data = race.store.get(key)
        assert data is not None and _intact(data)
        assert data.partition(b"\n")[2].startswith(f"worker-{i}:".encode())


def test_reader_never_sees_a_partial_value(race: Race) -> None:
    assert race.bad_reads == []
    assert race.reads >= PROCESSES + 1  # at least the final pass read every value


def test_no_temp_files_left_after_race(race: Race) -> None:
    leftovers = [p for p in race.store.root.rglob("*") if "~" in p.name and LOCK_DIR not in p.parts]
    assert leftovers == []


# -- atomicity details ----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(f"file://{tmp_path / 'store'}")


def test_temp_and_lock_files_are_not_listed(store: FileStore) -> None:
    store.create("runs/r1/workers/0", b"w")
    (store.root / "runs" / "r1" / "workers" / ".1.tmp~0123abcd").write_bytes(b"half")
    (store.root / "runs" / "r1" / "workers" / "x y").write_bytes(b"not a key")
    (store.root / LOCK_DIR).mkdir()
    (store.root / LOCK_DIR / "abc.lock").write_bytes(b"")
    assert store.list("") == ["runs/r1/workers/0"]
    assert store.list("runs/r1/workers/") == ["runs/r1/workers/0"]
    assert store.list("runs/r1/workers/.") == []


def test_lock_fallback_keeps_locks_out_of_keys(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(src: object, dst: object, **_: object) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported", str(dst))

    monkeypatch.setattr(os, "link", refuse)
    assert store.create("a/b", b"1") is True
    assert store.create("a/b", b"2") is False
    assert store.get("a/b") == b"1"
    assert any((store.root / LOCK_DIR).iterdir())
    assert store.list("") == ["a/b"]


def test_lost_link_reply_still_wins(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """On NFS a retried LINK may answer EEXIST although the first try made the link."""
    real_link = os.link

    def link_then_claim_it_existed(src: str, dst: str, **kw: object) -> None:
        real_link(src, dst)
        raise FileExistsError(errno.EEXIST, "File exists", dst)

    monkeypatch.setattr(os, "link", link_then_claim_it_existed)
    assert store.create("k", b"mine") is True
    assert store.create("k", b"other") is False
    assert store.get("k") == b"mine"


def test_failed_write_leaves_nothing(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create("keep", b"x")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreUnavailable, match="is full.*free some space or pick another --store"):
        store.create("runs/r1/result", b"data")
    assert store.get("runs/r1/result") is None
    assert sorted(p.name for p in store.root.rglob("*")) == ["keep", "r1", "runs"]


def test_key_cannot_also_be_a_folder(store: FileStore) -> None:
    store.create("a/b", b"value")
    with pytest.raises(StoreError, match="'a/b' is a value") as info:
        store.create("a/b/c", b"x")
    assert not isinstance(info.value, StoreUnavailable)
    store.create("x/y/z", b"value")
    with pytest.raises(StoreError, match="already a folder of other keys"):
        store.create("x/y", b"x")
    assert store.get("x/y") is None
    store.delete("x/y")  # a folder, not a value: nothing to delete
    assert store.list("x/") == ["x/y/z"]


def test_missing_root_reads_as_empty_and_is_made_on_first_write(store: FileStore) -> None:
    assert store.get("a") is None
    assert store.list("") == []
    store.delete("a")
    assert store.wait("", timeout=0.01) == []
    assert not store.root.exists()
    assert store.create("a", b"1")
    assert store.root.is_dir()


def test_list_does_not_leave_the_root(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    store = FileStore(f"file://{tmp_path / 'store'}")
    store.create("a", b"1")
    assert store.list("../") == []
    assert store.list("..") == []
    assert store.list("a/../../") == []


def test_stats_count_each_operation(store: FileStore, tmp_path: Path) -> None:
    every_operation(store, tmp_path)
    assert store.stats.counts == EVERY_OPERATION  # exists: a stat each, no listing


def test_a_folder_of_keys_does_not_exist_as_a_key(store: FileStore) -> None:
    store.create("a/b/c", b"1")
    assert not store.exists("a/b") and store.exists("a/b/c")


# -- errors ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_store_below_a_file_is_unavailable(tmp_path: Path) -> None:
    """Works as root too (chmod does not stop root): a folder cannot be made inside a file."""
    (tmp_path / "afile").write_bytes(b"")
    store = FileStore(f"file://{tmp_path / 'afile' / 'store'}")
    assert store.get("k") is None
    assert store.list("") == []
    with pytest.raises(StoreUnavailable) as info:
        store.create("runs/r1/plan", b"x")
    text = _one_line(info.value)
    assert str(tmp_path / "afile") in text
    assert "is a file, not a folder" in text and "pick another --store" in text
    with pytest.raises(StoreUnavailable):
        store.create_from_file("k", tmp_path / "afile")


def test_unwritable_folder_is_unavailable(tmp_path: Path) -> None:
    """Checked for real: as root (CI), in a child that drops every capability with setpriv."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code = (
        "import sys; from ciflow.stores.file import FileStore; from ciflow.stores.base import "
        "StoreUnavailable\n"
        "try:\n    FileStore(sys.argv[1]).create('k', b'x')\n"
        "except StoreUnavailable as exc:\n    print(exc)\n"
    )
    command = [sys.executable, "-c", code, f"file://{locked}"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's override of permissions"
        command = [setpriv, "--bounding-set=-all", *command]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    finally:
        locked.chmod(0o700)
    text = done.stdout.strip()
    assert f"store folder {locked} is not writable" in text, done.stdout + done.stderr
    assert "Permission denied" in text and "fix its permissions" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EACCES, r"is not writable: Permission denied; .*fix its permissions"),
        (errno.EROFS, r"is on a read-only file system: pick another --store"),
        (errno.ENOSPC, r"is full: .*free some space or pick another --store"),
        (errno.EIO, r"failed: .*; check it or pick another --store"),
    ],
)
def test_write_errors_name_the_folder_and_the_fix(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, code: int, expected: str
) -> None:
    store.root.mkdir()
    real_open = os.open

    def failing_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).startswith(str(store.root)):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", failing_open)
    writes: list[Callable[[], bool]] = [
        lambda: store.create("k", b"x"),
        lambda: store.create_from_file("k", Path(__file__)),
    ]
    for write in writes:
        with pytest.raises(StoreUnavailable, match=expected) as info:
            write()
        assert _one_line(info.value).startswith(f"store folder {store.root} ")
    assert list(store.root.iterdir()) == []


def test_root_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "store").write_bytes(b"")
    store = FileStore(f"file://{tmp_path / 'store'}")
    assert store.list("") == []
    with pytest.raises(StoreUnavailable, match="is a file, not a folder"):
        store.create("k", b"x")


def test_os_errors_become_store_errors(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create("k", b"x")
    real_open = os.open

    def denied(path: object, flags: int, *args: object, **kwargs: object) -> object:
        if str(path).startswith(str(store.root)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("os.open", denied)
    with pytest.raises(StoreUnavailable, match="is not readable.*fix its permissions"):
        store.get("k")


def test_missing_source_and_bad_destination(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot store .*missing"):
        store.create_from_file("k", tmp_path / "missing")
    assert store.get("k") is None
    store.create("k", b"x")
    (tmp_path / "afile").write_bytes(b"")
    with pytest.raises(StoreError, match="cannot write"):
        store.get_to_file("k", tmp_path / "afile" / "out")


# -- opening --------------------------------------------------------------------------------


def test_open_store_plain_path_and_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = open_store(str(tmp_path / "s"))
    assert isinstance(plain, FileStore) and plain.root == tmp_path / "s"
    url = open_store(f"file://{tmp_path / 's'}")
    assert isinstance(url, FileStore) and url.root == tmp_path / "s"
    plain.create("k", b"v")
    assert url.get("k") == b"v"
    monkeypatch.chdir(tmp_path)
    relative = open_store("file://rel/store")
    assert isinstance(relative, FileStore) and relative.root == tmp_path / "rel" / "store"
    assert isinstance(open_store("s"), FileStore) and open_store("s").get("k") == b"v"
    localhost = FileStore(f"file://localhost{tmp_path / 's'}")
    assert localhost.root == tmp_path / "s"


def test_links_planted_in_the_store_folder_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not the store's")
    root = tmp_path / "store"
    store = open_store(f"file://{root}")
    assert store.create("runs/r/results/a", b"1")
    (root / "runs" / "r" / "results" / "planted").symlink_to(outside / "secret")
    (root / "runs" / "r" / "elsewhere").symlink_to(outside)
    assert store.list("runs/r/") == ["runs/r/results/a"]  # links are not keys
    with pytest.raises(StoreError, match="symbolic link"):
        store.get("runs/r/results/planted")
    with pytest.raises(StoreError, match="symbolic link"):
        store.get("runs/r/elsewhere/secret")
    with pytest.raises(StoreError, match="symbolic link"):
        store.create("runs/r/elsewhere/new", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]  # nothing written there


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "lock-fallback"])
def test_a_link_planted_at_a_key_is_no_value_and_create_replaces_it(
    tmp_path: Path, links: bool
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("not the store's")
    root = tmp_path / "store"
    store = FileStore(f"file://{root}")
    store._links = links
    assert store.create("runs/r/results/a", b"1")
    planted = root / "runs" / "r" / "results" / "m0"
    planted.symlink_to(outside / "target")
    assert not store.exists("runs/r/results/m0")
    assert store.create("runs/r/results/m0", b"the real result")
    assert not planted.is_symlink()
    assert store.get("runs/r/results/m0") == b"the real result"
    assert store.exists("runs/r/results/m0")
    assert not store.create("runs/r/results/m0", b"second")  # create-if-absent still holds
    assert (outside / "target").read_text() == "not the store's"  # never followed
    dangling = root / "runs" / "r" / "results" / "m1"
    dangling.symlink_to(outside / "absent")
    assert store.create_from_file("runs/r/results/m1", outside / "target")
    assert store.get("runs/r/results/m1") == b"not the store's"
    assert not (outside / "absent").exists()
