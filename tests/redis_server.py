"""A real ``redis-server`` for the tests: started on a free 127.0.0.1 port in a temp folder.

    with redis_server(tmp_path, password="pw", tls=True) as server:
        store = open_store(server.url(db=1))

The server keeps nothing on disk (``--save '' --appendonly no``) unless ``persist=True`` (an
append-only file fsynced on every write, so a killed and restarted server keeps its keys). TLS
uses a self-signed certificate made with ``cryptography`` (or the ``openssl`` command when that
package is missing), valid for 127.0.0.1 and localhost; `RedisServer.ca_file` trusts it. A
machine without ``redis-server`` fails the test with a clear message: the tests never skip.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

__all__ = ["RedisServer", "free_port", "redis_server"]


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: the redis store tests need a real server "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
        )
    return path


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 and localhost (cert, key paths)."""
    cert, key = folder / "server.crt", folder / "server.key"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=ciflow test redis", "-keyout", str(key),
             "-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ciflow test redis")])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(alt, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@dataclass
class RedisServer:
    """One running ``redis-server``; `kill` and `start` it again on the same port."""

    folder: Path
    port: int
    password: str | None = None
    tls: bool = False
    persist: bool = False
    ca_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _key_file: Path | None = field(default=None, repr=False)

    def url(self, db: int = 0, *, user: str | None = None, password: str | None = None,
            **query: object) -> str:  # fmt: skip
        """A store URL for this server: ``password`` defaults to the server's own."""
        scheme = "rediss" if self.tls else "redis"
        secret = self.password if password is None else password
        auth = ""
        if user is not None or secret:
            auth = quote(user or "", safe="") + (f":{quote(secret, safe='')}" if secret else "")
            auth += "@"
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}" + (f"?{tail}" if tail else "")

    def _args(self) -> list[str]:
        args = [_binary("redis-server"), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--protected-mode", "no", "--loglevel", "warning",
                "--logfile", str(self.folder / "redis.log"), "--databases", "64"]  # fmt: skip
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else [
            "--appendonly", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            assert self.ca_file is not None and self._key_file is not None
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-auth-clients", "no",
                     "--tls-cert-file", str(self.ca_file), "--tls-key-file", str(self._key_file),
                     "--tls-ca-cert-file", str(self.ca_file)]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        return args

    def start(self, timeout: float = 20.0) -> None:
        """Start the server (again) and wait until it answers PING."""
        if self.tls and self.ca_file is None:
            self.ca_file, self._key_file = _certificate(self.folder)
        self.proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                log = self.folder / "redis.log"
                why = (log.read_text() if log.exists() else "") + self.proc.stderr.read().decode()  # type: ignore[union-attr]
                pytest.fail(f"redis-server exited with {self.proc.returncode}: {why.strip()}")
            with contextlib.suppress(Exception):
                if self.client(socket_timeout=1).ping():
                    return
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server on port {self.port} did not answer PING in {timeout}s")
            time.sleep(0.02)

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """A redis-py client of this server (as its admin: the default user)."""
        import redis

        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.ca_file))
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           **kwargs)  # fmt: skip

    def cli(self, *args: str) -> str:
        """Run ``redis-cli`` against this server; its standard output."""
        cmd = [_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            cmd += ["--tls", "--cacert", str(self.ca_file)]
        env = {"REDISCLI_AUTH": self.password} if self.password else {}
        proc = subprocess.run([*cmd, *args], capture_output=True, env=env, timeout=30, check=True)
        return proc.stdout.decode()

    def kill(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def redis_server(
    folder: Path, *, password: str | None = None, tls: bool = False, persist: bool = False
) -> Iterator[RedisServer]:
    """A server in ``folder`` for the ``with`` block, killed at its end."""
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(5):  # another process may take the free port first
        server = RedisServer(folder, free_port(), password=password, tls=tls, persist=persist)
        try:
            server.start()
            break
        except pytest.fail.Exception as exc:
            if "Address already in use" not in str(exc):
                raise
    try:
        yield server
    finally:
        server.kill()
