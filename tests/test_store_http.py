"""The ``http://`` store against a real ``ciflow serve`` process: the contract, tokens, TLS,
compression, a server that is down, killed and restarted.

`Served` and `serve` start the server as the user does (``python -P -m ciflow serve``);
tests/test_server.py uses them too.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from store_contract import MiB, StoreContract

from ciflow.errors import ExitCode
from ciflow.stores import Store
from ciflow.stores.base import StoreDenied, StoreFlaky
from ciflow.stores.http import HttpStore

RW = "rw-token-0123456789abcdef"
RO = "ro-token-0123456789abcdef"
TEAM = "team-token-0123456789abcdef"


class Served:
    """A ``ciflow serve`` process: its URL, data folder and stderr (the access log)."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, data: Path, log: Path) -> None:
        self.proc, self.url, self.data, self.log = proc, url, data, log
        self.port = int(url.rsplit(":", 1)[1])

    def client(self, path: str = "", token: str | None = RW, **env: str) -> HttpStore:
        full = {"CIFLOW_STORE_TOKEN": token} if token else {}
        return HttpStore(self.url + path, env={**full, **env})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def token_file(folder: Path) -> Path:
    path = folder / "tokens"
    if not path.exists():
        path.write_text(f"# test tokens\nrw {RW}\nro {RO}\nrw {TEAM} team-a\n")
        path.chmod(0o600)
    return path


def serve(
    folder: Path, *extra: str, data: Path | None = None, port: int = 0, scheme: str = "http"
) -> Served:
    """Start ``ciflow serve`` (tokens `RW`, `RO`, `TEAM`) and wait until /healthz answers."""
    data = data or folder / "data"
    log = folder / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "ciflow", "serve", "--port", str(port), "--data",
             str(data), "--token-file", str(token_file(folder)), *extra],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        text = log.read_text()
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
            return Served(proc, url, data, log)
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError(f"ciflow serve did not start: {log.read_text()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("serve"))
    yield served
    assert served.stop() == 0


_SPACES = itertools.count()


class TestHttpStore(StoreContract):
    """The contract, each test in a fresh namespace of one server (so each store is empty)."""

    blob_size = 64 * MiB

    @pytest.fixture
    def store(self, server: Served) -> Iterator[Store]:
        self.clients: list[HttpStore] = []
        with server.client(f"/t{next(_SPACES)}") as store:
            yield store
        for client in self.clients:
            client.close()

    def other_client(self, store: Store) -> Store:
        client = HttpStore(store.url, env={"CIFLOW_STORE_TOKEN": RW})
        self.clients.append(client)
        return client


# -- tokens ---------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_refused_at_once(server: Served) -> None:
    for token, says in (
        (None, "no token"),
        ("wrong-token-0123456789", "the token is not accepted"),
    ):
        with server.client("/tok", token=token) as store:
            with pytest.raises(StoreDenied, match=f"HTTP 401: {says}.*CIFLOW_STORE_TOKEN") as exc:
                store.list("")
            assert exc.value.exit_code == ExitCode.USAGE
            assert "\n" not in str(exc.value) and "wrong-token" not in str(exc.value)
            assert store.stats.counts.get("retries", 0) == 0


def test_a_read_only_token_reads_and_waits_but_never_writes(server: Served) -> None:
    with server.client("/ro") as rw, server.client("/ro", token=RO) as ro:
        assert rw.create("k", b"v")
        assert ro.get("k") == b"v" and ro.exists("k") and ro.list("") == ["k"]
        assert ro.wait("", known=(), timeout=5) == ["k"]
        for write in (lambda: ro.create("x", b""), lambda: ro.delete("k")):
            with pytest.raises(StoreDenied, match="HTTP 403: the token is read-only"):
                write()
        assert rw.list("") == ["k"]


def test_a_token_limited_to_a_namespace(server: Served) -> None:
    with (
        server.client("/team-a", token=TEAM) as mine,
        server.client("/team-b", token=TEAM) as other,
    ):
        assert mine.create("k", b"v")
        with pytest.raises(StoreDenied, match="not valid for namespace 'team-b'"):
            other.list("")
    with server.client("", token=TEAM) as default:
        with pytest.raises(StoreDenied, match="namespace 'default'"):
            default.get("k")


def test_an_https_url_for_a_plain_server_is_refused_at_once(server: Served) -> None:
    with HttpStore(server.url.replace("http://", "https://"), env={}) as store:
        with pytest.raises(StoreDenied, match="does not speak TLS; use http://"):
            store.list("")


# -- on the wire ----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_compressed_bodies_round_trip(server: Served, tmp_path: Path, encoding: str) -> None:
    value = b"compress me " * 10_000
    src = tmp_path / "src"
    src.write_bytes(value * 20)  # 2.4 MB: streamed, HEAD first
    with server.client(f"/enc-{encoding}?encoding={encoding}") as store:
        assert store.create("small", b"x") and store.create("big", value)
        assert store.create_from_file("file", src) and not store.create_from_file("file", src)
        assert store.get("small") == b"x" and store.get("big") == value
        assert store.get_to_file("file", tmp_path / "out") and (tmp_path / "out").read_bytes() == (
            value * 20
        )
    headers = {"Authorization": f"Bearer {RW}", "Accept-Encoding": encoding}
    raw = requests.get(f"{server.url}/enc-{encoding}/v1/keys/big", headers=headers, stream=True)
    assert raw.headers["Content-Encoding"] == encoding
    assert len(raw.raw.read(decode_content=False)) < len(value) // 10
    raw.close()


# -- a server that is down ------------------------------------------------------------------


@pytest.mark.parametrize("bound", ["retry_for", "timeout"])  # ?timeout= as on redis:// and s3://
def test_a_server_that_is_down_fails_after_the_bounded_retries(tmp_path: Path, bound: str) -> None:
    port = free_port()
    with HttpStore(f"http://127.0.0.1:{port}?{bound}=1", env={}) as store:
        began = time.monotonic()
        with pytest.raises(
            StoreFlaky, match=r"list .. failed after \d+ attempts: connection"
        ) as exc:
            store.list("")
        assert time.monotonic() - began < 20
        assert "is `ciflow serve` running there?" in str(exc.value)
        assert store.stats.counts["retries"] >= 2


def test_a_killed_server_restarted_on_its_folder_lost_nothing(tmp_path: Path) -> None:
    first = serve(tmp_path)
    with first.client("/run") as store:
        for i in range(20):
            assert store.create(f"runs/r/results/m{i}", f"{i}".encode())
        first.stop(signal.SIGKILL)
        found: list[list[str]] = []
        # a call while the server is down retries until it is back
        caller = threading.Thread(target=lambda: found.append(store.list("runs/r/results/")))
        caller.start()
        time.sleep(0.5)
        second = serve(tmp_path, data=first.data, port=first.port)
        try:
            caller.join(60)
            assert found and len(found[0]) == 20
            assert store.get("runs/r/results/m7") == b"7"
            assert not store.create("runs/r/results/m7", b"again")
            assert store.stats.counts["retries"] >= 1
        finally:
            assert second.stop() == 0


# -- TLS ------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ciflow test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    served = serve(tmp_path, "--cert", str(cert), "--key", str(key))
    try:
        assert served.url.startswith("https://127.0.0.1:")
        with served.client("/tls", CIFLOW_STORE_CA_FILE=str(cert)) as store:
            assert store.create("k", b"secret") and store.get("k") == b"secret"
            assert store.wait("", known=["k"], timeout=0.1) == ["k"]
        with HttpStore(f"{served.url}/tls?ca_file={cert}", env={"CIFLOW_STORE_TOKEN": RW}) as s:
            assert s.list("") == ["k"]
        with served.client("/tls") as unverified:  # no CA: a refusal, not retried
            with pytest.raises(StoreDenied, match="TLS certificate does not verify.*CA_FILE"):
                unverified.list("")
            assert unverified.stats.counts.get("retries", 0) == 0
        env = {**os.environ, "CIFLOW_STORE_TOKEN": RW, "CIFLOW_STORE_CA_FILE": str(cert)}
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "ciflow", "status", "--store", f"{served.url}/tls",
             "--run-id", "nope"], capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0 and "run nope" in proc.stdout, proc.stderr
        env.pop("CIFLOW_STORE_CA_FILE")  # the same through the command line's --ca-file
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "ciflow", "--ca-file", str(cert), "status", "--store",
             f"{served.url}/tls", "--run-id", "nope"], capture_output=True, text=True, env=env,
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0 and "run nope" in proc.stdout, proc.stderr
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "ciflow", "status", "--store", f"{served.url}/tls",
             "--run-id", "nope"], capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    finally:
        assert served.stop() == 0
