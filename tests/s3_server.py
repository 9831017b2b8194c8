"""A real S3 API server for the s3:// store's tests: moto's server as a subprocess, and a proxy.

`MotoServer` starts ``python -m moto.server`` on a free loopback port (moto's own choice: port
0, read back from its log), waits until it answers and gives the AWS variables a client needs
(dummy credentials, a region, ``AWS_ENDPOINT_URL``, no config files, no instance metadata). A
missing moto fails the test: it is part of the test extra, never a reason to skip.

`Proxy` is a TCP proxy on loopback in front of a server: `Proxy.stop` and `Proxy.start` take
it down and up again on its port (a restarted service that kept its state), and
``strip_if_none_match`` drops that header from every request (a service without conditional
writes: it answers 200 to every create). `Proxy.fault` breaks the next answer to a method:
``drop`` forwards the request and loses the whole answer (a create that took effect but whose
answer never came), ``cut`` forwards the first 64 KiB of the answer and hangs up.

``atomic_completions`` passes one ``CompleteMultipartUpload`` at a time: moto checks its
If-None-Match before it assembles the parts, without a lock, so concurrent completions of one
key all succeed there (4 of 4 in most tries); S3 itself makes the completion atomic.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

__all__ = ["MotoServer", "Proxy", "aws_env", "client", "process_env"]

#: the longest moto may take to start answering, seconds
START_TIMEOUT = 60.0
_PORT = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


def aws_env(endpoint: str, key: str = "testing", secret: str = "testing") -> dict[str, str]:
    """The AWS variables of a client of ``endpoint`` (the caller drops every other AWS_*)."""
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def process_env(endpoint: str, **kw: str) -> dict[str, str]:
    """This process's environment with no AWS_* of its own and ``aws_env(endpoint)``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**clean, **aws_env(endpoint, **kw)}


def client(endpoint: str, key: str = "testing", secret: str = "testing") -> Any:
    """A plain boto3 S3 client of ``endpoint`` (not ciflow's), with dummy credentials."""
    import boto3  # type: ignore[import-untyped]

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
    )  # fmt: skip


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1, started by `start` and ended by `stop`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._log = Path(tempfile.mkstemp(prefix="ciflow-moto-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            pytest.fail(f"the s3 tests need moto's server: pip install -e '.[test]' ({exc})")
        with open(self._log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto's server exited {self.proc.returncode}: {self.log_tail()}")
            found = _PORT.search(self._log.read_bytes())
            if found and self._answers(int(found.group(1))):
                self.port = int(found.group(1))
                return self
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"moto's server did not answer within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/data.json", timeout=2):
                return True
        except OSError:
            return False

    def log_tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:]

    def post(self, path: str, data: bytes = b"") -> Any:
        """POST to moto's own API (``/moto-api/reset``, ``/moto-api/reset-auth``)."""
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method="POST",
            headers={"Content-Type": "application/octet-stream"},  # not a form: moto reads it
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"{}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self._log.unlink()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Proxy:
    """A TCP proxy from a loopback port to ``target`` (host, port), one request per connection.

    Each request's head is rewritten to ``Connection: close`` (so every request is a new
    connection the proxy sees) and, with ``strip_if_none_match``, loses its If-None-Match.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        strip_if_none_match: bool = False,
        atomic_completions: bool = False,
    ) -> None:
        self.target, self.strip, self.atomic = target, strip_if_none_match, atomic_completions
        self._completing = threading.Lock()
        self.port = 0
        self.requests = 0
        self._faults: list[tuple[str, str]] = []
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        """Listen (again, on the same port once it had one) and serve in a thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def fault(self, method: str, mode: str) -> None:
        """Break the answer to the next ``method`` request: ``drop`` it, ``cut`` it short, or
        answer ``"<status> <S3 error code>"`` (``"503 SlowDown"``) without passing it on."""
        assert mode in ("drop", "cut") or mode[:3].isdigit(), mode
        with self._lock:
            self._faults.append((method, mode))

    def _take_fault(self, head: bytes) -> str | None:
        method = head.split(b" ", 1)[0].decode()
        with self._lock:
            for i, (want, mode) in enumerate(self._faults):
                if want == method:
                    del self._faults[i]
                    return mode
        return None

    def stop(self) -> None:
        """Refuse connections from now on and cut those open (a service that went down)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            cut, self._open = list(self._open), set()
        for sock in cut:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            head, rest = _read_head(conn)
            if head is None:
                return
            with self._lock:
                self.requests += 1
            line = head.split(b"\r\n", 1)[0]
            completing = self.atomic and line.startswith(b"POST ") and b"uploadId=" in line
            with self._completing if completing else contextlib.nullcontext():
                self._forward(conn, head, rest)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _forward(self, conn: socket.socket, head: bytes, rest: bytes) -> None:
        """Send one request upstream and its answer back (or not, as a fault says)."""
        fault = self._take_fault(head)
        if fault is not None and fault[:3].isdigit():
            _answer(conn, head, rest, fault)
            return
        upstream = socket.create_connection(self.target, timeout=60)
        try:
            with self._lock:
                self._open.update((conn, upstream))
            upstream.sendall(self._rewrite(head) + rest)
            threading.Thread(target=_pump, args=(conn, upstream), daemon=True).start()
            if fault == "drop":
                _drop(upstream, conn)  # the service answered; the client never hears it
            else:
                _pump(upstream, conn, limit=64 << 10 if fault == "cut" else None)
        finally:
            self._close(upstream)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _rewrite(self, head: bytes) -> bytes:
        lines = head.split(b"\r\n")
        drop = (b"connection:", b"keep-alive:") + ((b"if-none-match:",) if self.strip else ())
        kept = [line for line in lines[1:] if not line.lower().startswith(drop)]
        return b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n"

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_head(conn: socket.socket) -> tuple[bytes | None, bytes]:
    """A request's head (without its blank line) and the body bytes read with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pump(src: socket.socket, dst: socket.socket | None, limit: int | None = None) -> None:
    """Copy ``src`` to ``dst`` (None: nowhere) until ``src`` ends or ``limit`` bytes passed;
    then end ``dst``'s sending side."""
    sent = 0
    try:
        while chunk := src.recv(65536):
            if limit is not None and sent + len(chunk) >= limit:
                if dst is not None:
                    dst.sendall(chunk[: limit - sent])
                return  # hang up mid-answer
            sent += len(chunk)
            if dst is not None:
                dst.sendall(chunk)
        if dst is not None:
            dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _answer(conn: socket.socket, head: bytes, rest: bytes, fault: str) -> None:
    """Answer a request with an S3 error (``"503 SlowDown"``) instead of the service."""
    lower = head.lower()
    if b"expect: 100-continue" not in lower:  # the body comes at once: take it first
        found = re.search(rb"content-length: *(\d+)", lower)
        left = int(found.group(1)) - len(rest) if found else 0
        while left > 0 and (chunk := conn.recv(min(left, 65536))):
            left -= len(chunk)
    status, _, code = fault.partition(" ")
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        "<Message>injected by the test proxy</Message></Error>"
    ).encode()
    conn.sendall(
        f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def _drop(src: socket.socket, client: socket.socket) -> None:
    """Read the whole answer of ``src``, passing on only a ``100 Continue`` (botocore waits a
    second for it before sending a body), never the final answer."""
    data = b""
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            data += chunk
            if data.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in data:
                interim, _, data = data.partition(b"\r\n\r\n")
                client.sendall(interim + b"\r\n\r\n")
