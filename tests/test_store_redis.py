"""The ``redis://`` store against real ``redis-server`` processes on 127.0.0.1.

The contract suite runs against a plain server and a TLS one; then what only Redis has: the
layout other Redis clients see, expiry, passwords and ACL users, TLS, the bounded retries of a
server that is down or restarted, the wait's push, and whole dry-runs over a Redis store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, free_port, redis_server
from store_contract import StoreContract, write_blob

from ciflow.errors import UsageError
from ciflow.execution.masking import MASKER
from ciflow.stores import Store, open_store
from ciflow.stores.base import StoreDenied, StoreFlaky
from ciflow.stores.redis import CHUNK, RedisStore, parse_url

PIPELINES = Path(__file__).parent / "pipelines"
ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cr:t/pw"  # needs percent-encoding in a URL
#: the ACL docs/architecture.md ("The redis store") gives a ciflow user
ACL = "~ciflow:* &ciflow:* +@read +@write +@scripting +@pubsub +@connection +time -@dangerous"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as s:
        yield s


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server with a password for the default user and an ACL user ``ci``."""
    with redis_server(tmp_path_factory.mktemp("redis-pw"), password=PASSWORD) as s:
        s.client().execute_command("ACL", "SETUSER", "ci", "on", ">ci-pw", *ACL.split())
        s.client().execute_command("ACL", "SETUSER", "tiny", "on", ">tiny-pw", "~other:*",
                                   "+@all")  # fmt: skip
        yield s


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis-tls"), tls=True) as s:
        yield s


@pytest.fixture
def clients() -> Iterator[list[Store]]:
    """Stores a test opens, closed at its end."""
    opened: list[Store] = []
    yield opened
    for store in opened:
        store.close()


def _open(clients: list[Store], url: str) -> RedisStore:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    clients.append(store)
    return store


def _ciflow(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -P -m ciflow ARGS`` from the project's folder (imports the installed package)."""
    command = [sys.executable, "-P", "-m", "ciflow", *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)


class TestRedisStoreContract(StoreContract):
    """The contract on db 1 of the plain server (flushed before each test), 64 MiB blobs."""

    blob_size = 64 << 20

    @pytest.fixture
    def store(self, server: RedisServer) -> Iterator[Store]:
        server.client(db=1).flushdb()
        self.opened: list[Store] = []
        with RedisStore(server.url(1)) as store:
            yield store
        for other in self.opened:
            other.close()

    def other_client(self, store: Store) -> Store:
        other = RedisStore(store.url)
        self.opened.append(other)
        return other


class TestRedisTlsStoreContract(TestRedisStoreContract):
    """The contract again over TLS (a self-signed certificate, trusted through ``ca_file``)."""

    blob_size = 8 << 20

    @pytest.fixture
    def store(self, tls: RedisServer) -> Iterator[Store]:
        tls.client(db=2).flushdb()
        self.opened = []
        with RedisStore(tls.url(2, ca_file=tls.ca_file)) as store:
            yield store
        for other in self.opened:
            other.close()


# -- the URL ------------------------------------------------------------------------------


def test_the_url_and_its_defaults() -> None:
    t = parse_url("redis://cache.example", {})
    assert (t.tls, t.host, t.port, t.db, t.user, t.password) == (
        False, "cache.example", 6379, 0, None, None)  # fmt: skip
    assert (t.ttl_ms, t.prefix, t.timeout, t.ca_file) == (7 * 86400_000, "ciflow:", 30.0, None)
    t = parse_url("rediss://ci:p%40ss@h:6380/3?ttl=0&prefix=team:&timeout=2.5", {})
    assert (t.tls, t.user, t.password, t.port, t.db) == (True, "ci", "p@ss", 6380, 3)
    assert (t.ttl_ms, t.prefix, t.timeout) == (0, "team:", 2.5)
    assert t.shown == "rediss://ci:***@h:6380/3?ttl=0&prefix=team:&timeout=2.5"
    env = {"CIFLOW_STORE_PASSWORD": "from-env", "REDISCLI_AUTH": "cli"}
    assert parse_url("redis://h", env).password == "from-env"
    assert parse_url("redis://h", {"REDISCLI_AUTH": "cli"}).password == "cli"
    assert parse_url("redis://:url@h", env).password == "url"  # the URL's own wins
    assert parse_url("redis://h", env).shown == "redis://h"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h/x", "database 'x' is not a number"),
        ("redis://h:port/0", "port is not a number"),
        ("redis:///0", "names no host"),
        ("redis://h/0?tll=5", "unknown option 'tll'"),
        ("redis://h/0?ttl=-1", "ttl='-1' is not a number of seconds"),
        ("redis://h/0?timeout=soon", "timeout='soon' is not a number of seconds"),
        ("redis://h/0?prefix=a b", "prefix= must be"),
        ("redis://h/0?ca_file=/etc/hosts", "ca_file= needs rediss://"),
        ("rediss://:pw@h/0?ca_file=/no/such.pem", "the CA file /no/such.pem does not exist"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_mistake(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)) as err:
        RedisStore(url)
    assert "\n" not in str(err.value) and ":pw@" not in str(err.value)


def test_without_the_redis_package_the_cli_says_what_to_install() -> None:
    code = ("import sys; sys.modules['redis'] = None; from ciflow.cli import main; "
            "sys.argv = ['ciflow', 'status', '--store', 'redis://127.0.0.1:1/0', '--run-id', "
            "'x']; main()")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "install ciflow[redis]" in proc.stderr


def test_help_and_the_registry_do_not_import_redis() -> None:
    code = (
        "import sys; from ciflow.cli.app import app; from ciflow.stores.registry import "
        "profile_for; assert profile_for('rediss://h').pushes; print('redis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- what other Redis clients see -----------------------------------------------------------


def test_small_values_are_plain_strings_redis_cli_reads(
    server: RedisServer, clients: list[Store]
) -> None:
    store = _open(clients, server.url(4, prefix="layout:"))
    server.client(db=4).flushdb()
    assert store.create("runs/r1/plan", b'{"modules": ["build"]}')
    assert server.cli("-n", "4", "GET", "layout:runs/r1/plan") == '{"modules": ["build"]}\n'
    assert server.cli("-n", "4", "ZRANGE", "layout:~index", "0", "-1") == "runs/r1/plan\n"
    assert server.client(db=4).type("layout:runs/r1/plan") == b"string"


def test_large_values_are_chunks_published_by_one_manifest(
    server: RedisServer, clients: list[Store], tmp_path: Path
) -> None:
    store = _open(clients, server.url(5))
    redis = server.client(db=5)
    redis.flushdb()
    src = tmp_path / "big"
    write_blob(src, 2 * CHUNK + 5)
    assert store.create_from_file("outputs/big", src)
    manifest = redis.hgetall("ciflow:outputs/big")
    assert int(manifest[b"size"]) == 2 * CHUNK + 5 and int(manifest[b"chunks"]) == 3
    chunks = sorted(k.decode() for k in redis.keys("ciflow:~chunk:*"))
    assert chunks == [f"ciflow:~chunk:{manifest[b'id'].decode()}:{n}" for n in range(3)]
    assert store.get("outputs/big") == src.read_bytes()
    assert store.create("outputs/big", b"other") is False
    assert not store.create_from_file("outputs/big", src)  # the loser leaves no chunks
    assert sorted(k.decode() for k in redis.keys("ciflow:~chunk:*")) == chunks
    store.delete("outputs/big")
    assert redis.keys("ciflow:*") == [] and store.get("outputs/big") is None


def test_racing_uploads_of_one_key_leave_only_the_winners_chunks(
    server: RedisServer, clients: list[Store], tmp_path: Path
) -> None:
    redis = server.client(db=6)
    redis.flushdb()
    racers = [_open(clients, server.url(6)) for _ in range(4)]
    files = []
    for i in range(4):
        files.append(tmp_path / f"blob{i}")
        write_blob(files[-1], CHUNK * 2 + 1 + i, seed=i)
    barrier, won = threading.Barrier(4), [False] * 4

    def race(i: int) -> None:
        barrier.wait(timeout=30)
        won[i] = racers[i].create_from_file("k", files[i])

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won.count(True) == 1
    assert racers[0].get("k") == files[won.index(True)].read_bytes()
    assert len(redis.keys("ciflow:~chunk:*")) == 3


def test_a_reader_never_sees_part_of_a_large_value(
    server: RedisServer, clients: list[Store], tmp_path: Path
) -> None:
    server.client(db=7).flushdb()
    writer, reader = _open(clients, server.url(7)), _open(clients, server.url(7))
    src = tmp_path / "blob"
    write_blob(src, 5 * CHUNK)
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            value = reader.get("v")
            seen.append(-1 if value is None else len(value))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        assert writer.create_from_file("v", src)
    finally:
        done.set()
        thread.join()
    assert set(seen) <= {-1, 5 * CHUNK}
    assert reader.get("v") == src.read_bytes()


def test_a_lost_answer_to_a_create_that_landed_is_still_a_win(
    server: RedisServer, clients: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    import redis

    server.client(db=8).flushdb()
    store = _open(clients, server.url(8))
    script = store._scripts["create"]
    calls: list[int] = []

    def lose_first_answer(*args: Any, **kwargs: Any) -> Any:
        answer = script(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        return answer

    monkeypatch.setitem(store._scripts, "create", lose_first_answer)
    assert store.create("claims/build/1", b"worker-0") is True
    assert store.create("claims/build/1", b"worker-1") is False
    big = os.urandom(CHUNK + 1)
    calls.clear()
    assert store.create("outputs/big", big) is True and store.get("outputs/big") == big
    assert store.stats.counts["retries"] == 2


# -- expiry -----------------------------------------------------------------------------------


def test_every_key_written_expires_after_the_ttl(server: RedisServer, clients: list[Store]) -> None:
    redis = server.client(db=9)
    redis.flushdb()
    store = _open(clients, server.url(9, ttl=100))
    store.create("runs/r1/plan", b"p")
    store.create("runs/r1/outputs/big", os.urandom(CHUNK + 1))
    keys = redis.keys("*")
    assert len(keys) == 6  # plan, manifest, 2 chunks, the index, the expiry set
    assert all(0 < redis.ttl(k) <= 100 for k in keys), {k: redis.ttl(k) for k in keys}
    forever = _open(clients, server.url(9, ttl=0))
    forever.create("runs/r2/plan", b"p")
    forever.create("runs/r2/outputs/big", os.urandom(CHUNK + 1))
    assert redis.ttl("ciflow:runs/r2/plan") == -1 and redis.ttl("ciflow:~index") == -1
    assert all(redis.ttl(k) == -1 for k in redis.keys("ciflow:~chunk:*") if k not in keys)
    assert 0 < redis.ttl("ciflow:~expiry") <= 100  # it holds only expiring keys


def test_an_expired_key_leaves_the_listing(server: RedisServer, clients: list[Store]) -> None:
    server.client(db=10).flushdb()
    brief, lasting = _open(clients, server.url(10, ttl=0.05)), _open(clients, server.url(10))
    brief.create("runs/r1/a", b"1")
    lasting.create("runs/r1/b", b"2")
    deadline = time.monotonic() + 30
    while brief.exists("runs/r1/a") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert brief.list("runs/") == ["runs/r1/b"] and brief.get("runs/r1/a") is None
    assert brief.create("runs/r1/a/deeper", b"fine: 'runs/r1/a' is gone")


# -- credentials and TLS ------------------------------------------------------------------


def test_a_password_and_an_acl_user_work(secured: RedisServer, clients: list[Store]) -> None:
    secured.client().flushdb()
    store = _open(clients, secured.url())
    ci = _open(clients, secured.url(user="ci", password="ci-pw"))
    assert store.create("runs/r1/plan", b"p") and ci.get("runs/r1/plan") == b"p"
    threading.Timer(0.1, lambda: store.create("runs/r1/workers/0", b"w")).start()
    assert ci.wait("runs/r1/workers/", timeout=30) == ["runs/r1/workers/0"]
    assert ci.create("runs/r1/big", os.urandom(CHUNK + 1))
    ci.delete("runs/r1/big")
    assert ci.list("runs/") == ["runs/r1/plan", "runs/r1/workers/0"]


def test_the_password_may_come_from_the_environment(
    secured: RedisServer, clients: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDISCLI_AUTH", PASSWORD)
    assert _open(clients, secured.url(password="")).list("nothing/") == []
    monkeypatch.setenv("CIFLOW_STORE_PASSWORD", "ci-pw")
    assert _open(clients, secured.url(user="ci", password="")).list("nothing/") == []


def test_a_refused_password_or_permission_is_denied_at_once(
    secured: RedisServer, clients: list[Store]
) -> None:
    wrong = _open(clients, secured.url(password="wrong-pw"))
    with pytest.raises(StoreDenied, match="WRONGPASS") as err:
        wrong.list("")
    assert wrong.stats.counts.get("retries", 0) == 0 and "wrong-pw" not in str(err.value)
    assert str(err.value).startswith(f"redis://:***@127.0.0.1:{secured.port}/0: ")
    tiny = _open(clients, secured.url(user="tiny", password="tiny-pw"))
    with pytest.raises(StoreDenied, match=r"NOPERM.*grant it ~ciflow:\* &ciflow:\*"):
        tiny.create("k", b"v")
    with pytest.raises(StoreDenied, match="NOAUTH.*give the password in the URL or CIFLOW_STORE_"):
        _open(clients, secured.url(password="")).exists("k")


@pytest.mark.parametrize("user", [None, "ci"])
def test_a_wrong_password_through_the_cli_is_one_line_and_2(
    secured: RedisServer, user: str | None
) -> None:
    url = secured.url(user=user, password="not-it")
    proc = _ciflow("status", "--store", url, "--run-id", "r1")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    shown = url.replace(":not-it@", ":***@")
    assert proc.stderr.startswith(f"ciflow: error: {shown}: the server refused ")
    assert "not-it" not in proc.stderr and "Traceback" not in proc.stderr


def test_tls_with_a_self_signed_certificate(
    tls: RedisServer, clients: list[Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StoreDenied, match="TLS certificate is not trusted.*ca_file"):
        _open(clients, tls.url(11)).list("")
    monkeypatch.setenv("CIFLOW_STORE_CA_FILE", str(tls.ca_file))
    store = _open(clients, tls.url(11))
    tls.client(db=11).flushdb()
    assert store.create("k", b"over TLS") and tls.cli("-n", "11", "GET", "ciflow:k") == "over TLS\n"
    proc = _ciflow("status", "--store", tls.url(11), "--run-id", "r1",
                   env={"CIFLOW_STORE_CA_FILE": ""})  # fmt: skip
    assert proc.returncode == 2 and "not trusted" in proc.stderr, proc.stderr


def test_the_password_is_masked_in_all_output(secured: RedisServer, clients: list[Store]) -> None:
    _open(clients, secured.url())
    assert MASKER.mask(f"on {secured.url()}") == f"on redis://:***@127.0.0.1:{secured.port}/0"


# -- a server that is down, or restarted ---------------------------------------------------


def test_a_server_that_is_down_fails_after_the_bounded_wait(clients: list[Store]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?timeout=1"
    store = _open(clients, url)
    with pytest.raises(StoreFlaky, match=r"cannot list 'runs/': no answer for .*refused") as err:
        store.list("runs/")
    assert str(err.value).startswith(url) and "?timeout=SECONDS" in str(err.value)
    assert store.stats.counts["retries"] >= 2 and store.stats.troubled > 0
    proc = _ciflow("status", "--store", url, "--run-id", "r1")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"ciflow: error: {url}: cannot ")
    assert "Traceback" not in proc.stderr


def test_a_wait_outlives_a_killed_and_restarted_server(
    tmp_path: Path, clients: list[Store]
) -> None:
    with redis_server(tmp_path / "srv", persist=True) as srv:
        waiter, writer = _open(clients, srv.url()), _open(clients, srv.url())
        writer.create("q/old", b"kept on disk")
        got: list[list[str]] = []
        thread = threading.Thread(target=lambda: got.append(waiter.wait("q/", ["q/old"], 60)))
        thread.start()
        deadline = time.monotonic() + 30
        while srv.client().pubsub_numsub("ciflow:~new@0")[0][1] == 0:
            assert time.monotonic() < deadline, "the wait never subscribed"
            time.sleep(0.01)
        srv.kill()
        srv.start()
        assert writer.create("q/new", b"after the restart")
        thread.join(timeout=60)
    assert got == [["q/new", "q/old"]]


# -- wait -------------------------------------------------------------------------------------


def test_wait_is_woken_by_a_create_and_does_not_poll(
    server: RedisServer, clients: list[Store]
) -> None:
    server.client(db=12).flushdb()
    store, other = _open(clients, server.url(12)), _open(clients, server.url(12))
    assert store.wait("a/", timeout=0.3) == []
    assert store.stats.counts["list"] <= 3  # a look, and one at the deadline: no polling
    threading.Timer(0.1, lambda: [other.create(f"b/{i}", b"") for i in range(20)]).start()
    threading.Timer(0.3, lambda: other.create("a/1", b"")).start()
    before = store.stats.counts["list"]
    assert store.wait("a/", timeout=30) == ["a/1"]
    assert store.stats.counts["list"] - before <= 3  # creates under b/ do not wake it


# -- whole runs -------------------------------------------------------------------------------

TAKEOVER = """
import time
import ciflow


@ciflow.module(cost=3)
def a(ctx) -> int:
    time.sleep(2.5)
    return 1


@ciflow.module(cost=3)
def b(ctx) -> int:
    time.sleep(2.5)
    return 2


@ciflow.module(cost=3)
def c(ctx) -> int:
    time.sleep(2.5)
    return 3


@ciflow.module(cost=3)
def d(ctx) -> int:
    time.sleep(2.5)
    return 4


@ciflow.module(depends_on=[a, b, c, d])
def total(ctx, a: int, b: int, c: int, d: int) -> int:
    return a + b + c + d
"""


def _dry_run(server: RedisServer, db: int, file: Path, report: Path, *extra: str) -> tuple[
        subprocess.CompletedProcess[str], dict[str, dict[str, Any]]]:  # fmt: skip
    server.client(db=db).flushdb()
    proc = _ciflow("dry-run", "--workers", "4", "--store", server.url(db), "-f", str(file),
                   "--no-cache", "--report", str(report), *extra)  # fmt: skip
    modules = {m["name"]: m for m in json.loads(report.read_text())["modules"]}
    return proc, modules


def test_a_dry_run_over_redis(server: RedisServer, tmp_path: Path) -> None:
    proc, modules = _dry_run(server, 13, PIPELINES / "distributed.py", tmp_path / "r.json")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out and "Traceback" not in out
    assert modules["report"]["result"] == 5
    assert {m["slot"] for m in modules.values()} <= {0, 1, 2, 3}
    redis = server.client(db=13)
    results = redis.keys("ciflow:runs/*/results/*")
    assert len(results) == 5 and all(0 < redis.ttl(k) <= 7 * 86400 for k in results)


def test_a_dry_run_over_redis_survives_a_killed_worker(server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "pipe").mkdir()
    file = tmp_path / "pipe" / "takeover.py"
    file.write_text(TAKEOVER)
    proc, modules = _dry_run(server, 14, file, tmp_path / "r.json", "--kill", "1@1",
                             "--heartbeat-timeout", "1.5")  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out
    assert modules["total"]["result"] == 10
    assert sorted(m["attempts"] for m in modules.values()) == [1, 1, 1, 1, 2], modules
    codes = re.search(r"worker exit codes: \[(.*)\]", out)
    assert codes is not None and "-9" in codes.group(1).split(", "), out


def test_a_failing_module_fails_fast_over_redis(server: RedisServer, tmp_path: Path) -> None:
    proc, modules = _dry_run(server, 15, PIPELINES / "failing.py", tmp_path / "r.json")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert {name: m["outcome"] for name, m in modules.items()} == {
        "fails": "failed", "after": "dependency_failed", "independent": "cancelled",
        "cleanup": "succeeded",
    }  # fmt: skip
    assert server.client(db=15).keys("ciflow:runs/*/cancel") != [] and "Traceback" not in out
