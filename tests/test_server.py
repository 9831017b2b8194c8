"""``ciflow serve`` as a process: its token file, its API on the wire, limits, graceful
shutdown, the access log, and distributed dry-runs through it (``--store http://...``)."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pyzstd
import requests
from test_store_http import RO, RW, Served, serve, token_file

from ciflow.errors import ExitCode
from ciflow.stores.base import StoreError

PIPELINES = Path(__file__).parent / "pipelines"
AUTH = {"Authorization": f"Bearer {RW}"}


def _ciflow(
    *args: str, token: str | None = RW, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CIFLOW_STORE_TOKEN"}
    if token is not None:
        env["CIFLOW_STORE_TOKEN"] = token
    return subprocess.run([sys.executable, "-P", "-m", "ciflow", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("serve"), "--max-body", "64K")
    yield served
    assert served.stop() == 0


# -- starting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "mode", "says"),
    [
        ("", 0o600, "has no token"),
        ("# only a comment\n\n", 0o600, "has no token"),
        (f"rw {RW}\n", 0o644, "may be read or written by other users: chmod 600"),
        (f"admin {RW}\n", 0o600, "line 1: expected `rw <token> [namespace]`"),
        ("rw short\n", 0o600, "a token is at least 16 characters"),
    ],
)
def test_a_bad_token_file_stops_the_server_before_it_listens(
    tmp_path: Path, content: str, mode: int, says: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    tokens.chmod(mode)
    proc = _ciflow("serve", "--port", "0", "--data", str(tmp_path / "d"), "--token-file",
                   str(tokens))  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert proc.stderr.startswith("ciflow: error: ") and proc.stderr.count("\n") == 1
    assert says in proc.stderr and "listening" not in proc.stderr


def test_the_socket_listens_before_the_server_says_so() -> None:
    """Clients that connect between "listening on" and uvicorn's start queue, not get refused."""
    from ciflow.server.runner import bind

    sock = bind("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass
    finally:
        sock.close()


def test_serve_without_uvicorn_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from ciflow.cli import main; "
        "sys.argv[:] = ['ciflow', 'serve', '--data', sys.argv[1], '--token-file', sys.argv[2]]; "
        "main()"
    )
    args = [sys.executable, "-P", "-c", code, str(tmp_path / "d"), str(token_file(tmp_path))]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == ExitCode.USAGE
    assert proc.stderr == "ciflow: error: ciflow serve needs uvicorn: install ciflow[server]\n"


def test_cert_without_key_is_a_usage_error(tmp_path: Path) -> None:
    proc = _ciflow("serve", "--port", "0", "--data", str(tmp_path / "d"), "--token-file",
                   str(token_file(tmp_path)), "--cert", str(tmp_path / "tokens"))  # fmt: skip
    assert proc.returncode == ExitCode.USAGE
    assert "--cert and --key go together" in proc.stderr


# -- tokens from the command line -----------------------------------------------------------


def test_a_missing_wrong_or_read_only_token_is_one_line_and_exit_2(server: Served) -> None:
    store = ["--store", server.url, "--run-id", "tokens"]
    for command in (["status", *store], ["summary", *store]):
        for token, says in ((None, "no token"), ("wrong-0123456789abcdef", "not accepted")):
            proc = _ciflow(*command, token=token)
            assert proc.returncode == ExitCode.USAGE, (command, proc.stdout, proc.stderr)
            assert proc.stderr.startswith(f"ciflow: error: http store {server.url}: HTTP 401")
            assert says in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
            assert "Traceback" not in proc.stderr and "wrong-0123" not in proc.stderr
    assert _ciflow("status", *store, token=RO).returncode == 0  # reading is allowed
    plan = _ciflow("plan", "-f", str(PIPELINES / "basic.py"), "--workers", "1", *store, token=RO)
    assert plan.returncode == ExitCode.USAGE, plan.stdout + plan.stderr
    assert "HTTP 403: the token is read-only" in plan.stderr and plan.stderr.count("\n") == 1


# -- the API on the wire --------------------------------------------------------------------


def _put(server: Served, key: str, data: object, **headers: str) -> requests.Response:
    return requests.put(f"{server.url}/wire/v1/keys/{key}", data=data,
                        headers={**AUTH, "If-None-Match": "*", **headers}, timeout=30)  # fmt: skip


def test_bodies_in_gzip_and_zstd_and_the_status_codes(server: Served) -> None:
    value = b"abc" * 5000
    assert (
        _put(server, "gz", gzip.compress(value), **{"Content-Encoding": "gzip"}).status_code == 201
    )
    assert (
        _put(server, "zs", pyzstd.compress(value), **{"Content-Encoding": "zstd"}).status_code
        == 201
    )
    for key in ("gz", "zs"):
        plain = requests.get(f"{server.url}/wire/v1/keys/{key}", timeout=30,
                             headers={**AUTH, "Accept-Encoding": "identity"})  # fmt: skip
        assert plain.content == value and "Content-Encoding" not in plain.headers
    for encoding, decode in (("gzip", gzip.decompress), ("zstd", pyzstd.decompress)):
        resp = requests.get(f"{server.url}/wire/v1/keys/gz", stream=True, timeout=30,
                            headers={**AUTH, "Accept-Encoding": encoding})  # fmt: skip
        assert resp.headers["Content-Encoding"] == encoding
        assert decode(resp.raw.read(decode_content=False)) == value
    again = _put(server, "zs", b"other", **{"X-Ciflow-Create-Id": "x"})
    assert again.status_code == 412 and again.json() == {"error": "'zs' exists"}
    first = _put(server, "once", b"1", **{"X-Ciflow-Create-Id": "id-1"})
    replay = _put(server, "once", b"1", **{"X-Ciflow-Create-Id": "id-1"})
    assert (first.status_code, replay.status_code) == (201, 201)
    assert replay.headers["X-Ciflow-Replayed"] == "1"
    assert requests.put(f"{server.url}/wire/v1/keys/k", data=b"", headers=AUTH).status_code == 428
    assert _put(server, "k", b"x", **{"Content-Encoding": "br"}).status_code == 415
    assert _put(server, "k", b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    cut = pyzstd.compress(value)[:-8]
    assert _put(server, "k", cut, **{"Content-Encoding": "zstd"}).status_code == 400
    assert _put(server, "a%20b", b"x").status_code == 400
    assert _put(server, "dir/leaf", b"x").status_code == 201
    clash = _put(server, "dir/leaf/deeper", b"x")
    assert clash.status_code == 409 and "a key cannot also be a folder" in clash.json()["error"]
    assert requests.get(f"{server.url}/wire/v1/keys/k", headers=AUTH).status_code == 404
    assert requests.post(f"{server.url}/wire/v1/keys/k", headers=AUTH).status_code == 405
    assert requests.get(f"{server.url}/nope", headers=AUTH).status_code == 404
    assert requests.get(f"{server.url}/healthz").json()["ok"] is True  # no token needed
    listed = requests.get(f"{server.url}/wire/v1/list", params={"prefix": "d"}, headers=AUTH)
    assert listed.json() == {"keys": ["dir/leaf"]}


def test_the_access_log_has_method_key_status_bytes_and_time(server: Served) -> None:
    assert _put(server, "logged/key", b"12345").status_code == 201
    deadline = time.monotonic() + 30  # the line is written once the answer went out
    while "/wire/v1/keys/logged/key" not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    line = next(x for x in server.log.read_text().splitlines() if "/wire/v1/keys/logged/key" in x)
    assert re.search(
        r"127\.0\.0\.1:\d+ PUT /wire/v1/keys/logged/key 201 in=5 out=0 [\d.]+ms$", line
    )
    assert RW not in server.log.read_text()


def test_bodies_above_max_body_are_refused_with_413(server: Served, tmp_path: Path) -> None:
    big = b"x" * (65 * 1024)
    assert _put(server, "sized", big).status_code == 413
    assert _put(server, "chunked", iter([big[:40_000], big[40_000:]])).status_code == 413
    bomb = pyzstd.compress(b"\0" * (8 << 20))  # 8 MiB of zeros in a few hundred bytes
    resp = _put(server, "bomb", bomb, **{"Content-Encoding": "zstd"})
    assert resp.status_code == 413 and "--max-body (65536 bytes)" in resp.json()["error"]
    with server.client("/limit") as store:
        with pytest.raises(StoreError, match="HTTP 413: the body is larger than this server's"):
            store.create("k", big)
        src = tmp_path / "src"
        src.write_bytes(b"y" * (2 << 20))
        with pytest.raises(
            StoreError, match=r"larger than the server accepts .*--max-body is 65536"
        ):
            store.create_from_file("f", src)
        assert store.create("k", big[:60_000]) and store.list("") == ["k"]


# -- graceful shutdown ----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_answers_long_polls_finishes_uploads_and_exits_0(
    tmp_path: Path, sig: signal.Signals
) -> None:
    served = serve(tmp_path)
    answers: list[requests.Response] = []
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"a" * 1000
        sent.set()
        time.sleep(1.0)  # SIGTERM arrives now
        yield b"b" * 1000

    waiting = threading.Thread(target=lambda: answers.append(requests.get(
        f"{served.url}/v1/wait", params={"prefix": "x/", "known": _empty(), "timeout": "25"},
        headers=AUTH, timeout=60)))  # fmt: skip
    upload: list[requests.Response] = []
    uploading = threading.Thread(target=lambda: upload.append(requests.put(
        f"{served.url}/v1/keys/in-flight", data=slow_body(), timeout=60,
        headers={**AUTH, "If-None-Match": "*"})))  # fmt: skip
    waiting.start()
    uploading.start()
    assert sent.wait(30)
    time.sleep(0.2)
    served.proc.send_signal(sig)
    assert served.proc.wait(30) == 0
    waiting.join(30)
    uploading.join(30)
    assert answers[-1].status_code == 200 and answers[-1].json() == {"keys": []}
    assert upload and upload[0].status_code == 201
    assert (served.data / "default" / "in-flight").read_bytes() == b"a" * 1000 + b"b" * 1000
    assert f"ciflow serve: stopped ({sig.name})" in served.log.read_text()


def _empty() -> str:
    from ciflow.stores.http import keys_digest

    return keys_digest([])


# -- distributed runs through the server ----------------------------------------------------


def _dry_run(served: Served, tmp_path: Path, file: Path, *extra: str) -> tuple[int, str, dict]:
    report = tmp_path / "report.json"
    proc = _ciflow("dry-run", "--store", served.url, "-f", str(file), "--report", str(report),
                   "--heartbeat-timeout", "2", *extra, timeout=180)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert report.exists(), out
    modules = {m["name"]: m for m in json.loads(report.read_text())["modules"]}
    return proc.returncode, out, modules


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("fleet"), "--no-access-log")
    yield served
    assert served.stop() == 0


def test_a_dry_run_of_4_workers_through_the_server(fleet_server: Served, tmp_path: Path) -> None:
    code, out, modules = _dry_run(fleet_server, tmp_path, PIPELINES / "distributed.py",
                                  "--workers", "4")  # fmt: skip
    assert code == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out
    assert modules["report"]["result"] == 5
    assert "worker exit codes: [0, 0, 0, 0]" in out


KILLED = """
import time
import ciflow

def make(name):
    @ciflow.module(name=name, cost=2)
    def part(ctx: ciflow.Context) -> int:
        time.sleep(2)
        return 1
    return part

parts = [make(n) for n in ("a", "b", "c", "d")]

@ciflow.module(depends_on=parts)
def total(ctx: ciflow.Context, a: int, b: int, c: int, d: int) -> int:
    return a + b + c + d
"""


def test_a_dry_run_survives_a_killed_worker(fleet_server: Served, tmp_path: Path) -> None:
    file = tmp_path / "pipeline.py"
    file.write_text(KILLED)
    code, out, modules = _dry_run(fleet_server, tmp_path, file, "--workers", "4", "--kill",
                                  "1@1")  # fmt: skip
    assert code == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out and modules["total"]["result"] == 4
    codes = re.search(r"worker exit codes: \[(.*)\]", out)
    assert codes is not None and codes.group(1).split(", ")[1] == "-9", out
    assert any(m["attempts"] == 2 for m in modules.values()), modules  # taken over


def test_a_dry_run_fails_fast_through_the_server(fleet_server: Served, tmp_path: Path) -> None:
    code, out, modules = _dry_run(fleet_server, tmp_path, PIPELINES / "failing.py",
                                  "--workers", "2")  # fmt: skip
    assert code == ExitCode.FAILED, out
    assert modules["fails"]["outcome"] == "failed"
    assert modules["after"]["outcome"] in ("dependency_failed", "cancelled")
    assert all(m["outcome"] != "missing" for m in modules.values()), modules
    run_id = re.search(r"dry-run (\S+): 2 worker\(s\)", out)
    assert run_id is not None, out
    with fleet_server.client() as store:
        assert store.exists(f"runs/{run_id.group(1)}/cancel")


def test_a_server_killed_mid_run_and_restarted_on_its_folder_loses_nothing(
    tmp_path: Path,
) -> None:
    file = tmp_path / "pipeline.py"
    file.write_text(KILLED)
    first = serve(tmp_path)
    report = tmp_path / "report.json"
    env = {**os.environ, "CIFLOW_STORE_TOKEN": RW}
    run = subprocess.Popen(
        [sys.executable, "-P", "-m", "ciflow", "dry-run", "--workers", "4", "--store", first.url,
         "-f", str(file), "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60  # the parts are running: their claims or starts
        while "/plan 201" not in first.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        first.stop(signal.SIGKILL)
        time.sleep(1.0)
        second = serve(tmp_path, data=first.data, port=first.port)
        try:
            out, _ = run.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            second.stop(signal.SIGKILL)  # no server left behind by a failed test
            raise
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert second.stop() == 0
    assert run.returncode == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out
    assert json.loads(report.read_text())["exit_code"] == 0
