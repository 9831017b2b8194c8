"""The ``github://`` artifact store against the local GitHub emulator (network: 127.0.0.1 only).

The contract suite runs twice: against the emulator as it is (names reserved by CreateArtifact)
and against a variant where two CreateArtifacts of one name both succeed and artifact ids are
given at finalization, so only the read-back decides the winner.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from store_contract import StoreContract

import ciflow.stores.github.creates as creates_module
from ciflow.errors import UsageError
from ciflow.stores import Store, StoreError, StoreUnavailable, open_store
from ciflow.stores.github.artifacts import GitHubArtifactStore
from ciflow.stores.github.blobs import CorruptDownload
from ciflow.stores.github.naming import NAME_MAX, artifact_name, key_from_name
from ciflow.stores.github.twirp import TwirpAuthError
from ciflow.stores.github.zipframe import unzip_first, zip_frame
from ciflow.stores.transport import BACKOFF_CAP, retry_after_seconds
from ciflow.testing.emulator import ARTIFACT_SERVICE, Faults, GitHubEmulator
from ciflow.testing.emulator import TwirpError as EmuTwirpError

MiB = 1 << 20
_ids = itertools.count()
JS = Path(__file__).parent / "js"


class Sleeps:
    """An injected sleep: records each delay, sleeps a little so racers interleave."""

    def __init__(self, on_sleep: Callable[[float], None] | None = None) -> None:
        self.delays: list[float] = []
        self.on_sleep = on_sleep
        self.lock = threading.Lock()

    def __call__(self, delay: float) -> None:
        with self.lock:
            self.delays.append(delay)
        if self.on_sleep is not None:
            self.on_sleep(delay)
        time.sleep(0.001)


def new_run() -> str:
    return f"run-{next(_ids)}"


class Clients:
    """Opens stores for one run of an emulator and closes them all at the end."""

    def __init__(self, emu: GitHubEmulator, run: str | None = None) -> None:
        self.emu, self.run = emu, run or new_run()
        self.opened: list[GitHubArtifactStore] = []
        self.jobs = itertools.count()

    def open(
        self, job: str | None = None, url: str = "github://", **kw: Any
    ) -> GitHubArtifactStore:
        job = job or f"job-{next(self.jobs)}"
        store = GitHubArtifactStore(url, env=self.emu.env(self.run, job), **kw)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(autouse=True)
def _default_behaviours(emulator: GitHubEmulator) -> Iterator[None]:
    """Tests change the module's emulator's behaviours: restore them afterwards."""
    yield
    emulator.default_behaviours()


@pytest.fixture
def clients(emu: GitHubEmulator) -> Iterator[Clients]:
    c = Clients(emu)
    yield c
    c.close()


# -- the contract ------------------------------------------------------------------------------


class TestGitHubArtifactStoreContract(StoreContract):
    """Every client is another job of one workflow run."""

    blob_size = 5 * MiB
    wait_bound = 8.0

    @pytest.fixture
    def store(self, emu: GitHubEmulator) -> Iterator[Store]:
        self.clients = Clients(emu)
        try:
            yield self.clients.open()
        finally:
            self.clients.close()

    def other_client(self, store: Store) -> Store:
        return self.clients.open()


class DuplicatingEmulator(GitHubEmulator):
    """A variant: CreateArtifact never refuses a name; ids are given at FinalizeArtifact.

    That is the weakest service the read-back rule must survive: every racer gets its own
    artifact, and only the listing after finalization picks the winner.
    """

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.dups: list[dict[str, Any]] = []
        self.dup_lock = threading.Lock()
        self.finalize_hook: Callable[[str, str], None] | None = None

    def _create_artifact(self, who: tuple[str, str], req: Any) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name = req.text("name")
        key = f"dups/{secrets_hex()}.zip"
        self._store.create(key, "application/zip", f"{name}.zip")
        with self.dup_lock:
            self.dups.append({"run": run, "job": job, "name": name, "blob": key, "id": None})
        return {"ok": True, "signed_upload_url": self._signed_url(key, "cw")}

    def _finalize_artifact(self, who: tuple[str, str], req: Any) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=True)
        name, size = req.text("name"), req.integer("size") or 0
        if self.finalize_hook is not None:
            self.finalize_hook(job, name)
        with self.dup_lock:
            mine = [a for a in self.dups if (a["run"], a["job"], a["name"]) == (run, job, name)]
            pending = [a for a in mine if a["id"] is None]
        if not pending:
            if mine:
                return {"ok": True, "artifact_id": str(mine[-1]["id"])}
            raise EmuTwirpError("not_found", f"artifact {name!r} not found")
        art = pending[-1]
        self._store.seal(art["blob"], size, req.opt_text("hash"))
        with self.dup_lock:
            art["id"] = next(self._next_id)
            art["created"] = time.time()
            art["size"] = size
        return {"ok": True, "artifact_id": str(art["id"])}

    def _finalized(self, run: str) -> list[dict[str, Any]]:
        with self.dup_lock:
            return sorted((a for a in self.dups if a["run"] == run and a["id"] is not None),
                          key=lambda a: a["id"])  # fmt: skip

    def _list_artifacts(self, who: tuple[str, str], req: Any) -> dict[str, Any]:
        run, _ = self._ids(who, req, same_job=False)
        name = req.opt_text("name_filter")
        return {
            "artifacts": [
                {"workflow_run_backend_id": a["run"], "workflow_job_run_backend_id": a["job"],
                 "database_id": str(a["id"]), "name": a["name"], "size": str(a["size"]),
                 "created_at": "2026-01-01T00:00:00Z"}
                for a in self._finalized(run) if name is None or a["name"] == name
            ]
        }  # fmt: skip

    def _signed_artifact_url(self, who: tuple[str, str], req: Any) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        name = req.text("name")
        found = [a for a in self._finalized(run) if (a["job"], a["name"]) == (job, name)]
        if not found:
            raise EmuTwirpError("not_found", f"artifact {name!r} not found")
        return {"signed_url": self._signed_url(found[0]["blob"], "r")}

    def _delete_artifact(self, who: tuple[str, str], req: Any) -> dict[str, Any]:
        run, job = self._ids(who, req, same_job=False)
        name = req.text("name")
        with self.dup_lock:
            found = [a for a in self.dups if (a["run"], a["job"], a["name"]) == (run, job, name)]
            if not found:
                raise EmuTwirpError("not_found", f"artifact {name!r} not found")
            art = max(found, key=lambda a: a["id"] or 0)  # the newest, as the toolkit picks
            self.dups.remove(art)
        self._store.delete(art["blob"])
        return {"ok": True, "artifact_id": str(art["id"] or 0)}


def secrets_hex() -> str:
    return os.urandom(8).hex()


@pytest.fixture(scope="module")
def dup_emulator() -> Iterator[DuplicatingEmulator]:
    with DuplicatingEmulator() as emu:
        yield emu


@pytest.fixture
def dup_emu(dup_emulator: DuplicatingEmulator) -> Iterator[DuplicatingEmulator]:
    dup_emulator.finalize_hook = None
    yield dup_emulator
    dup_emulator.finalize_hook = None


class TestDuplicatingVariantContract(TestGitHubArtifactStoreContract):
    """The whole contract again when CreateArtifact reserves nothing (read-back only)."""

    blob_size = 2 * MiB

    @pytest.fixture
    def store(self, dup_emu: DuplicatingEmulator) -> Iterator[Store]:
        self.clients = Clients(dup_emu)
        try:
            yield self.clients.open()
        finally:
            self.clients.close()


# -- races ----------------------------------------------------------------------------------------


def race(stores: list[GitHubArtifactStore], key: str) -> list[bool]:
    barrier = threading.Barrier(len(stores))

    def go(i: int) -> bool:
        barrier.wait(timeout=30)
        return stores[i].create(key, f"v{i}".encode())

    with ThreadPoolExecutor(len(stores)) as pool:
        return list(pool.map(go, range(len(stores))))


def test_two_jobs_race_many_keys(clients: Clients) -> None:
    a, b = clients.open(), clients.open()
    for round_ in range(15):
        key = f"runs/r/claims/m{round_}/0001"
        results = race([a, b], key)
        assert results.count(True) == 1, results
        assert a.get(key) == f"v{results.index(True)}".encode()
    assert not creates_module._NAME_LOCKS  # the per-name locks are released


@pytest.mark.parametrize("racers", [2, 8])
def test_variant_racing_creates_have_one_winner(dup_emu: DuplicatingEmulator, racers: int) -> None:
    clients = Clients(dup_emu)
    try:
        stores = [clients.open() for _ in range(racers)]
        for round_ in range(5):
            key = f"claims/x{round_}"
            results = race(stores, key)
            assert results.count(True) == 1, results
            winner = results.index(True)
            for s in stores[:2]:
                assert s.get(key) == f"v{winner}".encode()
            assert stores[0].list("claims/") == [f"claims/x{i}" for i in range(round_ + 1)]
        # losers removed their artifacts: one per key is left
        left = [a for a in dup_emu.dups if a["run"] == clients.run]
        assert len(left) == 5
    finally:
        clients.close()


def test_variant_first_created_finalizes_last(dup_emu: DuplicatingEmulator) -> None:
    """A creates first but B finalizes and reads back first: B must win, A must lose."""
    clients = Clients(dup_emu)
    try:
        a, b = clients.open("job-a"), clients.open("job-b")
        b_read_back = threading.Event()
        a_created = threading.Event()
        real_list = dup_emu._list_artifacts

        def hold_a(job: str, name: str) -> None:
            if job == "job-a":
                assert b_read_back.wait(10)

        def listing(who: tuple[str, str], req: Any) -> dict[str, Any]:
            out = real_list(who, req)
            if who[1] == "job-b":
                b_read_back.set()
            return out

        dup_emu.finalize_hook = hold_a
        dup_emu._rpcs[(ARTIFACT_SERVICE, "ListArtifacts")] = listing
        real_create = dup_emu._rpcs[(ARTIFACT_SERVICE, "CreateArtifact")]

        def create(who: tuple[str, str], req: Any) -> dict[str, Any]:
            if who[1] == "job-b":
                assert a_created.wait(10)
            out = real_create(who, req)
            if who[1] == "job-a":
                a_created.set()
            return out

        dup_emu._rpcs[(ARTIFACT_SERVICE, "CreateArtifact")] = create
        try:
            with ThreadPoolExecutor(2) as pool:
                fa = pool.submit(a.create, "k", b"a")
                fb = pool.submit(b.create, "k", b"b")
                assert (fa.result(timeout=30), fb.result(timeout=30)) == (False, True)
        finally:
            dup_emu._rpcs[(ARTIFACT_SERVICE, "ListArtifacts")] = real_list
            dup_emu._rpcs[(ARTIFACT_SERVICE, "CreateArtifact")] = real_create
        assert a.get("k") == b"b"
        assert [x["job"] for x in dup_emu.dups if x["run"] == clients.run] == ["job-b"]
    finally:
        clients.close()


# -- key encoding ------------------------------------------------------------------------------

_part = st.text("abcXYZ019._=@+-", min_size=1, max_size=12).filter(lambda p: p not in (".", ".."))
keys = st.lists(_part, min_size=1, max_size=6).map("/".join)


@given(keys)
@settings(max_examples=300, deadline=None)
def test_key_encoding_round_trip(key: str) -> None:
    name = artifact_name(key)
    assert key_from_name(name) == key
    assert not set(name) & set('":<>|*?\\/\r\n')
    assert name == name.lower() and len(name) <= NAME_MAX
    assert key_from_name(artifact_name(key, "ciflow-ns~"), "ciflow-ns~") == key
    assert key_from_name(name, "ciflow-ns~") is None


def test_names_of_keys_differing_in_case_differ() -> None:
    assert artifact_name("a/B") == "ciflow~a~^b"
    assert len({artifact_name(k).lower() for k in ("ab", "aB", "Ab", "AB", "a/b")}) == 5


@pytest.mark.parametrize(
    "name", ["my-artifact", "ciflow~", "ciflow~a~~b", "ciflow~a^B", "ciflow~a^", "ciflow~A",
             "ciflow~a b", "ciflow~~a", "ciflow~a~", "ciflow~..", "ciflow-x~a"],
)  # fmt: skip
def test_foreign_names_are_not_keys(name: str) -> None:
    assert key_from_name(name) is None


def test_key_too_long(clients: Clients) -> None:
    store = clients.open()
    longest = "k" * (NAME_MAX - len("ciflow~"))
    assert store.create(longest, b"v") and store.get(longest) == b"v"
    with pytest.raises(UsageError, match="256"):
        store.create(longest + "x", b"v")
    with pytest.raises(UsageError, match="uppercase letters count twice"):
        store.get("K" * 130)


# -- stores of one run, namespaces, other runs -----------------------------------------------


def test_jobs_share_a_run_runs_and_namespaces_are_separate(emu: GitHubEmulator) -> None:
    one, other = Clients(emu), Clients(emu)
    try:
        a, b = one.open("job-a"), one.open("job-b")
        ns = one.open("job-c", url="github://nightly")
        stranger = other.open("job-a")
        assert a.create("runs/1/workers/a", b"a") and b.create("runs/1/workers/b", b"b")
        assert a.list("runs/1/") == b.list("runs/1/") == ["runs/1/workers/a", "runs/1/workers/b"]
        assert b.get("runs/1/workers/a") == b"a"
        assert ns.list("") == [] and stranger.list("") == []
        assert ns.create("runs/1/workers/a", b"ns") and ns.get("runs/1/workers/a") == b"ns"
        assert a.get("runs/1/workers/a") == b"a"
        b.delete("runs/1/workers/a")  # another job's artifact
        assert a.list("") == ["runs/1/workers/b"]
    finally:
        one.close()
        other.close()


def test_open_store_routes_github(emu: GitHubEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in emu.env(new_run(), "job").items():
        monkeypatch.setenv(name, value)
    with open_store("github://") as store:
        assert isinstance(store, GitHubArtifactStore)
        assert store.create("a", b"1") and store.get("a") == b"1"
    with pytest.raises(UsageError, match="NAMESPACE"):
        open_store("github://Bad/ns")


def test_user_artifacts_are_ignored(emu: GitHubEmulator, clients: Clients) -> None:
    store = clients.open()
    resp, _ = store.twirp.rpc("CreateArtifact", {**store._ids(), "name": "coverage", "version": 4})
    url = resp["signed_upload_url"]
    store.blobs.put(url, b"x", {"x-ms-blob-type": "BlockBlob"}, "upload")
    store.twirp.rpc("FinalizeArtifact", {**store._ids(), "name": "coverage", "size": "1"})
    store.create("a", b"1")
    assert store.list("") == ["a"]


# -- the value format --------------------------------------------------------------------------


def test_value_is_a_zip_with_member_data(clients: Clients) -> None:
    store = clients.open()
    store.create("runs/1/Result", b"payload")
    entry = store._lookup(artifact_name("runs/1/Result"))[0]
    resp, _ = store.twirp.rpc("GetSignedArtifactURL", {**store._ids(), "name": entry.name})
    blob = requests.get(resp["signed_url"], timeout=10).content
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.namelist() == ["data"]
        assert zf.read("data") == b"payload"
        assert zf.testzip() is None


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 999])
def test_zip_frame_readable_by_zipfile_and_streaming_reader(zip64: bool, data: bytes) -> None:
    head, tail = zip_frame(len(data), zlib.crc32(data), zip64=zip64)
    blob = head + data + tail
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        assert zf.read("data") == data
    out = io.BytesIO()
    unzip_first(iter([blob[i : i + 7] for i in range(0, len(blob), 7)]), out.write, "t")
    assert out.getvalue() == data


class _NoSeek(io.RawIOBase):
    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return self.buf.write(b)


def test_streaming_reader_reads_deflated_zip_with_data_descriptor() -> None:
    data = b"official clients deflate and stream " * 5000
    raw = _NoSeek()
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("data", "w") as fh:
            fh.write(data)
    out = io.BytesIO()
    unzip_first(iter([raw.buf.getvalue()]), out.write, "t")
    assert out.getvalue() == data


def test_streaming_reader_rejects_truncation_and_garbage() -> None:
    head, tail = zip_frame(3, zlib.crc32(b"abc"))
    with pytest.raises(CorruptDownload):
        unzip_first(iter([head + b"ab"]), io.BytesIO().write, "t")
    with pytest.raises(CorruptDownload, match="checksum"):
        unzip_first(iter([head + b"abd" + tail]), io.BytesIO().write, "t")
    with pytest.raises(StoreError, match="not a ciflow archive"):
        unzip_first(iter([b"<html>" * 10]), io.BytesIO().write, "t")


needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules" / "@actions" / "artifact").is_dir(),
    reason="node or tests/js/node_modules missing",
)


def run_js(env: dict[str, str], steps: list[list[str]]) -> list[dict[str, Any]]:
    proc = subprocess.run(
        ["node", str(JS / "artifact.mjs"), json.dumps(steps)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, cwd=JS,
    )  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, f"node failed ({proc.returncode}): {proc.stderr[-2000:]}"
    line = lines[0]
    results: list[dict[str, Any]] = json.loads(line[len("RESULT ") :])
    return results


@needs_node
def test_official_client_reads_ciflow_artifacts_and_back(
    emu: GitHubEmulator, clients: Clients, tmp_path: Path
) -> None:
    store = clients.open("job-a")
    assert store.create("runs/1/Plan", b"plan bytes")
    up = tmp_path / "up"
    up.mkdir()
    (up / "data").write_bytes(b"uploaded by @actions/artifact " * 100)
    env = emu.env(clients.run, "job-b")
    results = run_js(
        env,
        [["download", artifact_name("runs/1/Plan"), str(tmp_path / "down")],
         ["upload", "ciflow~from-js", str(up), str(up / "data")]],
    )  # fmt: skip
    assert all(r["ok"] for r in results), results
    assert (tmp_path / "down" / "data").read_bytes() == b"plan bytes"
    assert store.get("from-js") == b"uploaded by @actions/artifact " * 100
    assert store.list("") == ["from-js", "runs/1/Plan"]


# -- retries ---------------------------------------------------------------------------------


def workload(store: GitHubArtifactStore, other: GitHubArtifactStore, tmp_path: Path) -> None:
    """Every operation, checked."""
    for i in range(8):
        assert store.create(f"w/{i}", f"value {i}".encode()) is True
        assert other.create(f"w/{i}", b"late") is False
    assert other.list("w/") == [f"w/{i}" for i in range(8)]
    for i in range(8):
        assert other.get(f"w/{i}") == f"value {i}".encode()
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(9 * MiB + 123))
    assert store.create_from_file("w/blob", src) is True
    assert other.get_to_file("w/blob", tmp_path / "copy") is True
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
    for i in range(0, 8, 2):
        other.delete(f"w/{i}")
    assert store.list("w/") == ["w/1", "w/3", "w/5", "w/7", "w/blob"]
    assert store.get("w/0") is None
    assert store.create("w/0", b"again") is True and other.get("w/0") == b"again"
    assert store.wait("w/", known=[], timeout=1) == ["w/0", "w/1", "w/3", "w/5", "w/7", "w/blob"]


ALL_FAULTS = ["429", "500", "503", "drop", "drop_after"]


@pytest.mark.parametrize(
    ("kinds", "seed"),
    [(["429", "500", "503"], 7), (["drop", "drop_after"], 7)]
    + [(ALL_FAULTS, s) for s in (1, 2, 9)],
)
def test_every_operation_survives_faults(
    emu: GitHubEmulator, clients: Clients, tmp_path: Path, kinds: list[str], seed: int
) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps, max_attempts=12)
    other = clients.open(sleep=sleeps, max_attempts=12)
    emu.faults = Faults(rate=0.3, kinds=kinds, seed=seed, blobs=True, retry_after=2)
    workload(store, other, tmp_path)
    emu.faults = Faults()
    assert store.stats.counts["retries"] + other.stats.counts["retries"] >= 10
    assert len(sleeps.delays) >= 10
    if "429" in kinds:
        assert 2.0 in sleeps.delays  # Retry-After of the Twirp 429 answers
    assert all(d <= BACKOFF_CAP for d in sleeps.delays)
    # nothing was created twice, no orphan is left
    names = [e.name for e in store._list_all()]
    assert len(names) == len(set(names)) == 6


def test_lost_create_answer_is_recovered(emu: GitHubEmulator, clients: Clients) -> None:
    """CreateArtifact applied, answer lost: the retry's 409 is our own orphan; remove, redo."""

    def heal(delay: float) -> None:
        emu.faults = Faults()

    store = clients.open(sleep=Sleeps(heal))
    store.names_held = False  # the read-back decides (no probe)
    emu.faults = Faults(rate=1.0, kinds=["drop_after"], methods=["CreateArtifact"])
    assert store.create("claims/m/1", b"mine") is True
    assert store.get("claims/m/1") == b"mine"
    assert store.stats.counts["CreateArtifact"] == 3  # lost, 409, again
    assert store.stats.counts["DeleteArtifact"] == 1


def test_a_name_held_by_a_writer_that_died_moves_to_the_next_generation(
    emu: GitHubEmulator, clients: Clients
) -> None:
    """CreateArtifact without a finalize holds the name (GitHub burns it for the run): a
    writer waits ``stale_after`` for a value, then writes the key as ``<name>!1``."""
    a = clients.open()
    a.twirp.rpc("CreateArtifact", {**a._ids(), "name": artifact_name("k"), "version": 7})
    sleeps = Sleeps()
    b = clients.open(url="github://?stale_after=2", sleep=sleeps)
    assert b.create("k", b"b") is True
    assert sum(sleeps.delays) >= 2.0 and b.stats.counts.get("DeleteArtifact", 0) == 0
    reader = clients.open()
    assert reader.get("k") == b"b" and reader.list("") == ["k"] and reader.exists("k")
    assert [a["name"] for a in emu.artifacts(clients.run) if a["finalized"]] == ["ciflow~k!1"]
    c = clients.open(url="github://?stale_after=2")
    assert c.create("k", b"c") is False  # the value shows: no wait
    reader.delete("k")
    assert reader.get("k") is None and reader.list("") == []


def test_retry_after_is_honoured(emu: GitHubEmulator, clients: Clients) -> None:
    sleeps = Sleeps(lambda delay: setattr(emu, "faults", Faults()))
    store = clients.open(sleep=sleeps)
    emu.faults = Faults(rate=1.0, kinds=["429"], retry_after=17, methods=["ListArtifacts"])
    assert store.list("") == []
    assert sleeps.delays == [17.0]
    assert store.stats.counts["ListArtifacts"] == 2


def test_too_long_retry_after_fails_at_once(emu: GitHubEmulator, clients: Clients) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    emu.faults = Faults(rate=1.0, kinds=["429"], retry_after=3600, methods=["ListArtifacts"])
    with pytest.raises(StoreUnavailable, match="retry after 3600 s"):
        store.list("")
    assert sleeps.delays == []


def test_retry_after_header_forms() -> None:
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    future = time.time() + 90
    from email.utils import formatdate

    assert 80 <= (retry_after_seconds(formatdate(future, usegmt=True)) or 0) <= 91
    assert retry_after_seconds(formatdate(time.time() - 100, usegmt=True)) == 0.0


def test_backoff_is_bounded_capped_and_jittered(emu: GitHubEmulator, clients: Clients) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    emu.faults = Faults(rate=1.0, kinds=["503"], methods=["ListArtifacts"])
    with pytest.raises(StoreUnavailable) as info:
        store.list("")
    assert str(info.value).count("\n") == 0
    assert "ListArtifacts failed after 6 attempts" in str(info.value)
    assert "HTTP 503" in str(info.value)
    assert store.stats.counts["ListArtifacts"] == 6
    assert len(sleeps.delays) == 5
    for i, delay in enumerate(sleeps.delays):
        assert 0.5 * min(BACKOFF_CAP, 2**i) <= delay <= min(BACKOFF_CAP, 2**i)


class FlakyAdapter(requests.adapters.HTTPAdapter):
    """Answers the first ``n`` requests itself (by default an HTML proxy error page)."""

    def __init__(
        self, n: int, status: int, body: bytes = b"<html>Bad gateway</html>", **headers: str
    ) -> None:
        super().__init__()
        self.n, self.status, self.body, self.headers = n, status, body, headers

    def send(self, request: requests.PreparedRequest, *args: Any, **kw: Any) -> requests.Response:
        if self.n > 0:
            self.n -= 1
            resp = requests.Response()
            resp.status_code, resp.raw = self.status, io.BytesIO(self.body)
            resp.headers.update({"Content-Type": "text/html", **self.headers})
            resp.request, resp.url = request, request.url or ""
            return resp
        return super().send(request, *args, **kw)


@pytest.mark.parametrize("status", [200, 404, 502])
def test_bodies_that_are_not_json_are_retried(clients: Clients, status: int) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    store.transport.session.mount("http://", FlakyAdapter(2, status))
    assert store.create("a", b"1") is True
    assert store.get("a") == b"1"
    assert len(sleeps.delays) == 2


def test_forbidden_with_retry_after_is_a_rate_limit(clients: Clients) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    body = json.dumps({"code": "permission_denied", "msg": "secondary rate limit"}).encode()
    store.transport.session.mount("http://", FlakyAdapter(1, 403, body, **{"Retry-After": "3"}))
    assert store.list("") == [] and sleeps.delays == [3.0]
    store.transport.session.mount("http://", FlakyAdapter(1, 403, body))
    with pytest.raises(TwirpAuthError, match="HTTP 403 .permission_denied: secondary rate limit"):
        store.list("")


def test_read_back_waits_for_a_lagging_listing(emu: GitHubEmulator, clients: Clients) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    store.names_held = False  # a service that may keep duplicates: the read-back decides
    real = emu._rpcs[(ARTIFACT_SERVICE, "ListArtifacts")]
    lag = [2]

    def lagging(who: tuple[str, str], req: Any) -> dict[str, Any]:
        if lag[0] > 0:
            lag[0] -= 1
            return {"artifacts": []}
        return real(who, req)

    emu._rpcs[(ARTIFACT_SERVICE, "ListArtifacts")] = lagging
    try:
        assert store.create("k", b"v") is True
    finally:
        emu._rpcs[(ARTIFACT_SERVICE, "ListArtifacts")] = real
    assert sleeps.delays == [0.2, 0.5]


def test_value_deleted_before_the_read_back(emu: GitHubEmulator, clients: Clients) -> None:
    store, other = clients.open(sleep=Sleeps()), clients.open()
    store.names_held = False  # the read-back decides
    real = emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")]

    def finalize_then_delete(who: tuple[str, str], req: Any) -> dict[str, Any]:
        out = real(who, req)
        other.delete("k")  # another client deletes the key at once
        return out

    emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = finalize_then_delete
    try:
        assert store.create("k", b"v") is False
    finally:
        emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = real
    assert store.get("k") is None and store.create("k", b"w") is True


def test_lost_finalize_answer_is_recovered(emu: GitHubEmulator, clients: Clients) -> None:
    """FinalizeArtifact applied, answer lost, the retry refused: the read-back finds ours."""
    store = clients.open(sleep=Sleeps(lambda d: setattr(emu, "faults", Faults())))
    real = emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")]
    done: set[str] = set()

    def once(who: tuple[str, str], req: Any) -> dict[str, Any]:
        if req.text("name") in done:
            raise EmuTwirpError("failed_precondition", "the artifact is already finalized")
        done.add(req.text("name"))
        return real(who, req)

    emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = once
    emu.faults = Faults(rate=1.0, kinds=["drop_after"], methods=["FinalizeArtifact"])
    try:
        assert store.create("k", b"v") is True
    finally:
        emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = real
    assert store.get("k") == b"v" and store.stats.counts["FinalizeArtifact"] == 2


def test_the_services_artifact_limit_is_one_clear_line(
    emu: GitHubEmulator, clients: Clients
) -> None:
    emu.artifact_limit = 2
    store = clients.open()
    store.names_held = True  # no probe: it would count as a creation
    store.create("a", b"")
    store.delete("a")  # deleting gives no creation back
    store.create("b", b"")
    with pytest.raises(StoreError) as info:
        store.create("c", b"")
    assert str(info.value) == (
        "github store: cannot create 'c': GitHub allows 500 artifacts per job and GitHub "
        "refused it (the job has reached the limit of 2 artifacts (artifacts created, deleted "
        "ones included)); plan more workers (ciflow plan --workers N), so that each job "
        "creates fewer"
    )
    assert store.stats.counts["CreateArtifact"] == 3  # not retried


def test_bad_token_is_unavailable(emu: GitHubEmulator) -> None:
    with GitHubEmulator() as stranger:
        env = {**emu.env(new_run(), "j"), "ACTIONS_RUNTIME_TOKEN": stranger.token("r", "j")}
    store = GitHubArtifactStore(env=env)
    try:
        with pytest.raises(TwirpAuthError, match=r"HTTP 401 \(unauthenticated: ") as info:
            store.list("")
        assert isinstance(info.value, StoreUnavailable) and "\n" not in str(info.value)
    finally:
        store.close()


def test_failed_finalize_releases_the_name(emu: GitHubEmulator, clients: Clients) -> None:
    store = clients.open()
    real = emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")]

    def refuse(who: tuple[str, str], req: Any) -> dict[str, Any]:
        raise EmuTwirpError("invalid_argument", "size does not match")

    emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = refuse
    try:
        with pytest.raises(StoreError, match="FinalizeArtifact failed with HTTP 400"):
            store.create("k", b"v")
    finally:
        emu._rpcs[(ARTIFACT_SERVICE, "FinalizeArtifact")] = real
    assert store.create("k", b"v") is True


def test_camel_case_answers_are_read(emu: GitHubEmulator, clients: Clients) -> None:
    real = emu._rpc

    def camel(obj: Any) -> Any:
        if isinstance(obj, list):
            return [camel(x) for x in obj]
        if isinstance(obj, dict):
            return {
                k.split("_")[0] + "".join(w.title() for w in k.split("_")[1:]): camel(v)
                for k, v in obj.items()
            }
        return obj

    emu._rpc = lambda *a: camel(real(*a))  # type: ignore[method-assign]
    try:
        store, other = clients.open(), clients.open()
        assert store.create("a/b", b"1") and not other.create("a/b", b"2")
        assert other.get("a/b") == b"1" and other.list("a") == ["a/b"]
        other.delete("a/b")
        assert store.get("a/b") is None
    finally:
        emu._rpc = real  # type: ignore[method-assign]


# -- configuration ------------------------------------------------------------------------------


def test_missing_environment_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACTIONS_RESULTS_URL", raising=False)
    monkeypatch.delenv("ACTIONS_RUNTIME_TOKEN", raising=False)
    with pytest.raises(StoreUnavailable) as info:
        open_store("github://")
    message = str(info.value)
    assert "ACTIONS_RESULTS_URL and ACTIONS_RUNTIME_TOKEN not set" in message
    assert "JavaScript actions" in message and "action.yml" in message and "\n" not in message


def jwt(claims: object) -> str:
    import base64

    return "e30." + base64.urlsafe_b64encode(json.dumps(claims).encode()).decode() + ".sig"


@pytest.mark.parametrize(
    ("token", "why"),
    [("nonsense", "not a JWT"), ("a.!!!.c", "unreadable payload"),
     (jwt({"foo": 1}), "no scp claim"), (jwt(["x"]), "no scp claim"),
     (jwt({"scp": "Actions.GenericRead:x"}), "no Actions.Results scope"),
     (jwt({"scp": "Actions.Results:run"}), "malformed Actions.Results"),
     (jwt({"scp": "Actions.Results:run:"}), "malformed Actions.Results")],
)  # fmt: skip
def test_malformed_token(emu: GitHubEmulator, token: str, why: str) -> None:
    env = {"ACTIONS_RESULTS_URL": emu.url, "ACTIONS_RUNTIME_TOKEN": token}
    with pytest.raises(StoreUnavailable, match=why) as info:
        GitHubArtifactStore(env=env)
    assert token not in str(info.value)


def test_token_ids(emu: GitHubEmulator) -> None:
    token = jwt({"scp": "Actions.ExampleScope Actions.Results:ce7f54c7:ca395085"})
    store = GitHubArtifactStore(
        env={"ACTIONS_RESULTS_URL": "https://r.example/x/", "ACTIONS_RUNTIME_TOKEN": token}
    )
    assert (store.runtime.origin, store.runtime.run_id, store.runtime.job_id) == (
        "https://r.example", "ce7f54c7", "ca395085",
    )  # fmt: skip
    store.close()


# -- API calls ------------------------------------------------------------------------------------


def test_api_calls_per_operation(emu: GitHubEmulator, clients: Clients, tmp_path: Path) -> None:
    store = clients.open()

    def calls(op: Callable[[], object]) -> dict[str, int]:
        emu.reset_calls()
        op()
        return {**emu.calls, **emu.blob_calls}

    # the first create probes the service: the run's probe name created twice, a 409 that no
    # finalized artifact explains says names are held from creation on, so a finalized
    # artifact is the only one of its name (no read-back)
    assert calls(lambda: store.create("k", b"v")) == {
        "CreateArtifact": 3, "PutBlob": 1, "FinalizeArtifact": 1, "ListArtifacts": 1,
    }  # fmt: skip
    assert calls(lambda: store.create("k2", b"v")) == {
        "CreateArtifact": 1, "PutBlob": 1, "FinalizeArtifact": 1,
    }  # fmt: skip
    # a 409: the value is looked up by name (the name may be held by an upload under way)
    assert calls(lambda: store.create("k", b"w")) == {"CreateArtifact": 1, "ListArtifacts": 1}
    store.list("")
    assert calls(lambda: store.create("k", b"w")) == {"CreateArtifact": 1}  # listed just now
    # the store knows its own value: reading it back needs no lookup
    assert calls(lambda: store.get("k")) == {"GetSignedArtifactURL": 1, "GetBlob": 1}
    other = clients.open("another-job")
    assert calls(lambda: other.get("k")) == {
        "ListArtifacts": 1, "GetSignedArtifactURL": 1, "GetBlob": 1,
    }  # fmt: skip
    assert calls(lambda: store.get("absent")) == {"ListArtifacts": 2}  # both generations
    assert calls(lambda: store.list("")) == {"ListArtifacts": 1}
    assert calls(lambda: other.delete("k")) == {"ListArtifacts": 1, "DeleteArtifact": 1}
    # its writer still deletes by its own job id: absent is fine, another job's value is safe
    assert calls(lambda: store.delete("k")) == {"DeleteArtifact": 1}
    assert calls(lambda: store.delete("k")) == {"ListArtifacts": 2}
    # a key only its writer creates: never read back; its writer deletes it without a look
    assert calls(lambda: store.create("mine", b"v", sole=True)) == {
        "CreateArtifact": 1, "PutBlob": 1, "FinalizeArtifact": 1,
    }  # fmt: skip
    assert calls(lambda: store.create("mine", b"w", sole=True)) == {"CreateArtifact": 1}
    assert other.get("mine") == b"v"
    assert calls(lambda: store.delete("mine")) == {"DeleteArtifact": 1}
    assert other.get("mine") is None
    src = tmp_path / "src"
    src.write_bytes(b"x" * (9 * MiB))
    assert calls(lambda: store.create_from_file("big", src)) == {
        "CreateArtifact": 1, "PutBlock": 3, "PutBlockList": 1, "FinalizeArtifact": 1,
    }  # fmt: skip
    # where names may have duplicates (not held from creation on), a create reads back
    wary = clients.open()
    wary.names_held = False
    assert calls(lambda: wary.create("w", b"v")) == {
        "CreateArtifact": 1, "PutBlob": 1, "FinalizeArtifact": 1, "ListArtifacts": 1,
    }  # fmt: skip
    counts = store.stats.counts
    assert counts["blob-upload"] == 3 + 4 and counts["blob-download"] == 1
    assert counts["create"] == 6 and counts["create_from_file"] == 1 and counts["get"] == 2


def test_the_probe_finds_out_whether_names_are_held(emu: GitHubEmulator, clients: Clients) -> None:
    first, second = clients.open(), clients.open()
    assert first.create("a", b"1") and first._alone() is True
    assert first.creations_left() == 500 - 2  # its probe, kept for the others, counts too
    creates_module._EXCLUSIVE.clear()  # the second job is another process: it probes too
    emu.reset_calls()
    assert second.create("b", b"2")  # the kept probe answers at once: no creation spent
    assert emu.calls == {"CreateArtifact": 2, "ListArtifacts": 1, "FinalizeArtifact": 1}
    assert second.creations_left() == 500 - 1
    names = {a["name"]: a["finalized"] for a in emu.artifacts(clients.run)}
    assert names == {"ciflow~~probe": False, artifact_name("a"): True, artifact_name("b"): True}
    assert first.list("") == ["a", "b"]  # the probe is no key
    emu.unfinalized_reserves_name = False
    free = Clients(emu)
    try:
        store = free.open()
        emu.reset_calls()
        assert store.create("a", b"1")
        assert store._alone() is False and emu.calls["ListArtifacts"] == 1  # read back
        assert emu.calls["DeleteArtifact"] == 2  # both probe artifacts
        assert [a["name"] for a in emu.artifacts(free.run)] == [artifact_name("a")]
    finally:
        free.close()


def test_exists_answers_from_a_recent_listing(emu: GitHubEmulator, clients: Clients) -> None:
    store, other = clients.open(), clients.open()
    store.poll = 60.0
    assert store.create("k", b"v")
    store.list("")
    emu.reset_calls()
    assert store.exists("k")
    assert emu.calls == {}  # within the poll interval of that listing: no call
    # a miss is looked up by name (the listing may be a part of the run): both generations
    assert not store.exists("absent") and emu.calls == {"ListArtifacts": 2}
    assert other.create("late", b"v")
    emu.reset_calls()
    assert store.exists("late") is True  # another job's key, not listed yet: looked up
    assert emu.calls == {"ListArtifacts": 1}
    assert store.create("mine", b"v", sole=True)  # no read-back, yet seen at once
    emu.reset_calls()
    assert store.exists("mine") and emu.calls == {}
    store.delete("mine")
    store.delete("late")  # another job's: looked up first
    assert not store.exists("mine") and not store.exists("late") and store.exists("k")
    assert emu.calls == {"DeleteArtifact": 2, "ListArtifacts": 5}
    assert store.stats.counts["exists"] == 7


def test_wait_lists_once_per_poll_interval(emu: GitHubEmulator, clients: Clients) -> None:
    store = clients.open()
    store.poll = 0.3
    emu.reset_calls()
    started = time.monotonic()
    assert store.wait("", (), timeout=1.0) == []
    took = time.monotonic() - started
    lists = emu.calls.get("ListArtifacts", 0)
    assert took >= 1.0
    assert 2 <= lists <= int(took / 0.3) + 1  # at 0, 0.3, 0.6, 0.9 s: never faster


def test_a_listing_made_meanwhile_wakes_a_waiter_and_counts_as_its_poll(
    emu: GitHubEmulator, clients: Clients
) -> None:
    store, other = clients.open(), clients.open()
    store.poll = 5.0
    store.list("")  # the waiter's poll is not due for 5 s
    emu.reset_calls()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(store.wait, "", (), 4.0)
        time.sleep(0.2)
        assert other.create("fresh", b"v", sole=True)
        assert store.list("") == ["fresh"]  # a listing for another reason
        started = time.monotonic()
        assert waiting.result(timeout=10) == ["fresh"]
        assert time.monotonic() - started < 1.0
    assert emu.calls == {"CreateArtifact": 1, "FinalizeArtifact": 1, "ListArtifacts": 1}


def test_a_get_after_the_listed_artifact_went_finds_the_one_that_replaced_it(
    clients: Clients,
) -> None:
    """The listing named a racer's artifact that its job then deleted (it lost the create
    race); the value under the key is another job's: a get must find that, not None."""
    first, second, reader = clients.open(), clients.open(), clients.open()
    assert first.create("claims/m/2", b"loser")
    assert reader.list("claims/") == ["claims/m/2"]  # the reader now knows first's artifact
    first.delete("claims/m/2")
    assert second.create("claims/m/2", b"winner")
    assert reader.get("claims/m/2") == b"winner"


# -- retention, version, mime type -------------------------------------------------------------


def _days_ahead(stamp: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() - time.time()) / 86400


def test_create_sends_version_7_the_mime_type_and_a_retention(
    emu: GitHubEmulator, clients: Clients
) -> None:
    default, weekly = clients.open(), clients.open(url="github://?retention_days=7")
    env = {**emu.env(clients.run, "job-env"), "CIFLOW_RETENTION_DAYS": "30"}
    from_env = GitHubArtifactStore("github://", env=env)
    clients.opened.append(from_env)
    for store, key in ((default, "a"), (weekly, "b"), (from_env, "c")):
        assert store.create(key, b"v")
    found = {a["name"]: a for a in emu.artifacts(clients.run)}
    for key, days in (("a", 1), ("b", 7), ("c", 30)):
        art = found[artifact_name(key)]
        assert (art["version"], art["mime_type"]) == (7, "application/zip")
        assert _days_ahead(art["expires_at"]) == pytest.approx(days, abs=0.01)


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [("github://?retention_days=0", {}, "retention_days must be a whole number of days from 1 "
      "to 90 (GitHub's artifact retention), not '0'"),
     ("github://", {"CIFLOW_RETENTION_DAYS": "91"}, "CIFLOW_RETENTION_DAYS must be a whole"),
     ("github://?retention=3", {}, "unknown option 'retention' in store URL"),
     ("github://?stale_after=soon", {}, "stale_after in 'github://?stale_after=soon' must be")],
)  # fmt: skip
def test_bad_store_options_are_one_line(
    emu: GitHubEmulator, url: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError) as info:
        GitHubArtifactStore(url, env={**emu.env(new_run(), "j"), **env})
    assert message in str(info.value) and "\n" not in str(info.value)


# -- the budget of 500 creations per job, the storage quota --------------------------------------


def test_creations_are_counted_per_job_and_refused_past_the_budget(
    emu: GitHubEmulator, clients: Clients
) -> None:
    store = clients.open("budget-job")
    same_job = clients.open("budget-job")
    store.names_held = same_job.names_held = True  # no probe (it counts as a creation too)
    store.budget.limit = same_job.budget.limit = 3
    assert store.creations_left() == 3
    assert store.create("a", b"1") and store.creations_left() == 2
    store.delete("a")  # deleting gives no creation back
    assert same_job.create("b", b"2") and store.creations_left() == 1  # one job, one budget
    assert store.create("b", b"again") is False and store.creations_left() == 1  # a 409
    assert store.create("c", b"3") and store.creations_left() == 0
    emu.reset_calls()
    with pytest.raises(StoreError) as info:
        store.create("d", b"4")
    assert str(info.value) == (
        "github store: cannot create 'd': GitHub allows 3 artifacts per job and this job has "
        "created 3; plan more workers (ciflow plan --workers N), so that each job creates fewer"
    )
    assert emu.calls == {}  # refused before calling the service
    assert emu.creations(clients.run, "budget-job") == 3
    assert clients.open("another-job").creations_left() == 500
    assert Store.creations_left(store) is None  # stores without a limit


def test_the_storage_quota_is_one_clear_line_and_not_retried(
    emu: GitHubEmulator, clients: Clients
) -> None:
    sleeps = Sleeps()
    store = clients.open(sleep=sleeps)
    emu.storage_quota_hit = True
    with pytest.raises(StoreError) as info:
        store.create("k", b"v")
    message = str(info.value)
    assert message.startswith("github store: cannot create 'k': the artifact storage quota")
    assert "insufficient usage" in message and "delete old artifacts or lower --retention-days"
    assert "\n" not in message and sleeps.delays == []
    assert store.stats.counts["CreateArtifact"] == 1 and store.creations_left() == 500


# -- what GitHub does not document --------------------------------------------------------------


def test_unfinalized_artifacts_that_are_listed_are_no_values(
    emu: GitHubEmulator, clients: Clients
) -> None:
    emu.unfinalized_listed = True
    writer, reader = clients.open(), clients.open()
    writer.twirp.rpc("CreateArtifact", {**writer._ids(), "name": artifact_name("k"), "version": 7})
    assert reader.list("") == [] and reader.get("k") is None and not reader.exists("k")
    assert writer.create("other", b"v") and reader.list("") == ["other"]


def test_names_free_until_finalized_still_give_one_winner(
    emu: GitHubEmulator, clients: Clients
) -> None:
    emu.unfinalized_reserves_name = False
    stores = [clients.open() for _ in range(6)]
    for round_ in range(4):
        results = race(stores, f"claims/m/{round_}")
        assert results.count(True) == 1, results
        winner = results.index(True)
        assert all(s.get(f"claims/m/{round_}") == f"v{winner}".encode() for s in stores[:2])
    finalized = [a for a in emu.artifacts(clients.run) if a["finalized"]]
    assert len(finalized) == 4  # losers left nothing behind


class TestUnfinalizedVariantContract(TestGitHubArtifactStoreContract):
    """The contract again when names are free until finalized, unfinalized artifacts are
    listed (size 0) and cannot be deleted."""

    blob_size = 2 * MiB

    @pytest.fixture
    def store(self, emu: GitHubEmulator) -> Iterator[Store]:
        emu.unfinalized_reserves_name = False
        emu.unfinalized_listed = True
        emu.unfinalized_deletable = False
        self.clients = Clients(emu)
        try:
            yield self.clients.open()
        finally:
            self.clients.close()


def test_a_truncated_listing_hides_no_value(emu: GitHubEmulator, clients: Clients) -> None:
    """ListArtifacts answers the newest 3 only: gets and exists look names up, and a writer
    that finds its own artifact missing from a listing keeps what listings showed."""
    emu.list_limit = 3
    writer, reader = clients.open(), clients.open()
    for i in range(6):
        assert writer.create(f"k/{i}", f"v{i}".encode(), sole=True)
        writer.list("")  # the writer lists as a worker does, between its creates
    assert reader.list("") == ["k/3", "k/4", "k/5"]  # a part of the run
    assert reader.get("k/0") == b"v0" and reader.exists("k/1")  # looked up by name
    assert reader.create("k/2", b"late") is False  # create-once holds
    assert writer.list("") == [f"k/{i}" for i in range(6)]
    assert writer.view.cap == 3
    writer.delete("k/4")
    assert writer.list("") == ["k/0", "k/1", "k/2", "k/3", "k/5"]
    assert reader.get("k/4") is None


def test_a_writer_too_slow_to_finalize_gives_its_artifact_up(
    emu: GitHubEmulator, clients: Clients
) -> None:
    store = clients.open(url="github://?stale_after=2")
    store.names_held = True
    real = store.blobs.upload
    slow = [True]

    def upload(url: str, pieces: Any, total: int) -> str:
        if slow[0]:
            slow[0] = False
            time.sleep(1.1)  # more than half of stale_after: others may take us for dead
        return real(url, pieces, total)

    store.blobs.upload = upload  # type: ignore[method-assign]
    emu.reset_calls()
    assert store.create("k", b"v") is True and store.get("k") == b"v"
    assert emu.calls["CreateArtifact"] == 2 and emu.calls["DeleteArtifact"] == 1
    assert emu.calls["FinalizeArtifact"] == 1


@pytest.mark.parametrize("across", [False, True])
def test_a_re_run_attempt_sees_the_first_attempts_keys_only_if_the_service_shares_them(
    emu: GitHubEmulator, across: bool
) -> None:
    emu.artifacts_across_attempts = across
    run = new_run()
    first = GitHubArtifactStore(env=emu.env(run, "work-0"))
    second = GitHubArtifactStore(env=emu.env(run, "work-0", attempt=2))
    try:
        assert first.create("runs/r/results/a", b"ok")
        assert second.list("") == (["runs/r/results/a"] if across else [])
        assert second.get("runs/r/results/a") == (b"ok" if across else None)
        assert second.create("runs/r/results/a", b"again") is (not across)
    finally:
        first.close()
        second.close()


def test_the_retention_days_option_reaches_the_store(
    emu: GitHubEmulator, monkeypatch: pytest.MonkeyPatch, pipelines: Path
) -> None:
    from typer.testing import CliRunner

    from ciflow.cli.app import app

    runner = CliRunner()
    monkeypatch.delenv("CIFLOW_RETENTION_DAYS", raising=False)  # restored after the test
    bad = runner.invoke(app, ["--retention-days", "91", "status", "--help"])
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == [
        "ciflow: error: --retention-days (CIFLOW_RETENTION_DAYS) must be a whole number of days "
        "from 1 to 90 (GitHub's artifact retention), not '91'"
    ]
    run = new_run()
    ok = runner.invoke(
        app,
        ["--retention-days", "3", "plan", "-f", str(pipelines / "basic.py"), "--workers", "1",
         "--store", "github://", "--run-id", "r"],
        env=emu.env(run, "plan"),
    )  # fmt: skip
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    [plan] = [a for a in emu.artifacts(run) if a["finalized"]]
    assert _days_ahead(plan["expires_at"]) == pytest.approx(3, abs=0.01)


def test_a_key_whose_every_generation_is_held_is_one_clear_line(clients: Clients) -> None:
    dead = clients.open()
    for name in (artifact_name("k"), artifact_name("k") + "!1"):
        dead.twirp.rpc("CreateArtifact", {**dead._ids(), "name": name, "version": 7})
    store = clients.open(url="github://?stale_after=0.5", sleep=Sleeps())
    with pytest.raises(StoreError) as info:
        store.create("k", b"v")
    assert str(info.value) == (
        "github store: cannot create 'k': its artifact names stay held by uploads that were "
        "never finalized (writers that died, or lost requests); use another store or re-run "
        "the workflow"
    )
    assert store.get("k") is None
