"""The one retrying HTTP transport, against a scripted HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from ciflow.stores import StoreError, StoreUnavailable
from ciflow.stores.transport import RateLimited, Retry, Transport

#: one scripted answer: (status, headers, body), "drop" (close without answering),
#: "short" (announce 100 bytes, send 10, close) or ("slow", seconds) (answer 200 late)
Answer = Any


class Script:
    """The answers the server gives, in order (the last one repeats), and what it was sent."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def next(self, method: str, path: str) -> Answer:
        with self.lock:
            self.requests.append((method, path))
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    script: Script

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        answer = self.script.next(self.command, self.path)
        if answer == "drop":
            self.close_connection = True
            return
        if answer == "short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            self.close_connection = True
            return
        if answer[0] == "slow":
            time.sleep(answer[1])
            answer = (200, {}, b"late")
        status, headers, body = answer
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a timeout test)

    do_GET = do_POST = do_PUT = _answer


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def served(server: tuple[str, Script]) -> tuple[str, Script]:
    url, script = server
    script.answers, script.requests = [], []
    return url, script


class Recorder:
    """The transport's injected sleep and count callback."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.counts: list[str] = []

    def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)

    def count(self, op: str) -> None:
        self.counts.append(op)


def transport(rec: Recorder, **kw: Any) -> Transport:
    return Transport("test api", sleep=rec.sleep, count=rec.count, **kw)


def text(resp: requests.Response) -> str:
    if resp.status_code != 200:
        raise StoreError(f"refused: HTTP {resp.status_code}")
    return resp.text


OK = (200, {}, b"ok")


def test_429_503_and_a_dropped_connection_are_retried(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [(429, {"Retry-After": "2"}, b""), (503, {}, b""), "drop", OK]
    rec = Recorder()
    sent = transport(rec).send("POST", f"{url}/create", text, counter="create", data=b"body")
    assert (sent.value, sent.attempts) == ("ok", 4)
    assert sent.ambiguous is True  # the 503 and the drop may have created it
    assert script.requests == [("POST", "/create")] * 4
    assert rec.sleeps[0] == 2.0  # as Retry-After said
    assert 0.5 * 2 <= rec.sleeps[1] <= 2 and 0.5 * 4 <= rec.sleeps[2] <= 4  # 2nd and 3rd backoff
    assert rec.counts == ["create", "retries", "create", "retries", "create", "retries", "create"]


def test_rate_limits_and_first_tries_are_not_ambiguous(served: tuple[str, Script]) -> None:
    url, script = served
    rec = Recorder()
    script.answers = [OK]
    sent = transport(rec).send("GET", url, text, counter="get")
    assert (sent.value, sent.ambiguous, sent.attempts, rec.sleeps) == ("ok", False, 1, [])
    script.answers = [(429, {}, b""), (403, {"Retry-After": "1"}, b""), OK]
    sent = transport(rec).send("POST", url, text, counter="create")
    assert (sent.value, sent.ambiguous, sent.attempts) == ("ok", False, 3)
    assert 0.5 <= rec.sleeps[0] <= 1.0 and rec.sleeps[1] == 1.0


def test_retry_after_as_an_http_date(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [(503, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}, b""), OK]
    rec = Recorder()
    assert transport(rec).send("GET", url, text, counter="get").value == "ok"
    assert 25 <= rec.sleeps[0] <= 31


def test_too_long_retry_after_fails_at_once(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [(429, {"Retry-After": "3600"}, b""), OK]
    rec = Recorder()
    with pytest.raises(RateLimited, match="test api: listing rate limited: .* retry after 3600 s"):
        transport(rec, retry_after_max=300).send("GET", url, text, counter="get", what="listing")
    assert rec.sleeps == [] and len(script.requests) == 1
    script.answers = [(429, {"Retry-After": "20"}, b""), OK]
    with pytest.raises(RateLimited) as info:
        transport(rec, retry_after_max=10).send("GET", url, text, counter="get")
    assert isinstance(info.value, StoreUnavailable)
    assert (info.value.retry_after, info.value.why) == (20.0, "HTTP 429")


def test_backoff_is_capped_and_jittered_and_attempts_bounded(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [(503, {}, b"")]
    rec = Recorder()
    with pytest.raises(StoreUnavailable) as info:
        transport(rec, max_attempts=7, backoff_base=0.5, backoff_cap=4.0).send(
            "GET", url, text, counter="get", detail=lambda r: " (busy)"
        )
    assert str(info.value) == "test api: get failed after 7 attempts: HTTP 503 (busy)"
    assert len(script.requests) == 7 and len(rec.sleeps) == 6
    for i, delay in enumerate(rec.sleeps):
        assert 0.5 * min(4.0, 0.5 * 2**i) <= delay <= min(4.0, 0.5 * 2**i)
    assert len(set(rec.sleeps)) > 1  # jittered
    assert max(rec.sleeps) <= 4.0


@pytest.mark.parametrize("status", [401, 403, 404, 400])
def test_auth_and_client_errors_are_not_retried(served: tuple[str, Script], status: int) -> None:
    url, script = served
    script.answers = [(status, {}, b"no"), OK]
    rec = Recorder()
    with pytest.raises(StoreError, match=f"refused: HTTP {status}"):
        transport(rec).send("GET", url, text, counter="get")
    assert len(script.requests) == 1 and rec.sleeps == []


def test_a_timeout_is_retried_and_ambiguous(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [("slow", 1.0), OK]
    rec = Recorder()
    sent = transport(rec).send("POST", url, text, counter="create", timeout=(2.0, 0.2))
    assert (sent.value, sent.ambiguous, sent.attempts) == ("ok", True, 2)


def test_an_answer_that_breaks_off_is_retried(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = ["short", (200, {}, b"x" * 100)]
    rec = Recorder()

    def whole(resp: requests.Response) -> int:
        return sum(len(c) for c in resp.iter_content(7))

    sent = transport(rec).send("GET", url, whole, counter="download", stream=True)
    assert (sent.value, sent.attempts) == (100, 2)


def test_a_connection_refused_is_retried_then_fails(served: tuple[str, Script]) -> None:
    rec = Recorder()
    with pytest.raises(StoreUnavailable, match="failed after 3 attempts: connection failed"):
        transport(rec, max_attempts=3).send("GET", "http://127.0.0.1:9/", text, counter="get")
    assert rec.counts == ["get", "retries", "get", "retries", "get"]


def test_hooks_retry_and_fail_fast(served: tuple[str, Script]) -> None:
    url, script = served
    script.answers = [(200, {}, b"not yet"), (200, {}, b"done")]
    rec = Recorder()

    def read(resp: requests.Response) -> str:
        if resp.text != "done":
            raise Retry("not done", ambiguous=False)
        return resp.text

    sent = transport(rec).send("GET", url, read, counter="get")
    assert (sent.value, sent.ambiguous, sent.attempts) == ("done", False, 2)

    def quota(resp: requests.Response) -> None:
        if resp.headers.get("x-ratelimit-remaining") == "0":
            raise StoreError("quota spent")

    script.answers = [(429, {"x-ratelimit-remaining": "0"}, b""), OK]
    with pytest.raises(StoreError, match="quota spent"):
        transport(rec).send("GET", url, text, counter="get", fail_fast=quota)
    assert len(script.requests) == 3  # not retried


def test_failed_attempts_and_their_pauses_are_reported_as_trouble(
    served: tuple[str, Script],
) -> None:
    url, script = served
    script.answers = [(503, {}, b""), "drop", OK]
    spans: list[tuple[float, float]] = []
    pauses: list[float] = []
    t = Transport("test api", sleep=lambda s: (pauses.append(s), time.sleep(0.01)),
                  trouble=lambda a, b: spans.append((a, b)), backoff_base=0.01)  # fmt: skip
    t.send("GET", f"{url}/x", text, counter="get")
    assert len(spans) == 2 and all(b - a >= 0.01 for a, b in spans)  # each includes its pause
    assert spans[0][1] <= spans[1][0]
    script.answers = [(503, {}, b"")]
    spans.clear()
    with pytest.raises(StoreUnavailable):
        Transport("test api", sleep=lambda s: None, max_attempts=2,
                  trouble=lambda a, b: spans.append((a, b))).send("GET", f"{url}/x", text,
                                                                  counter="get")  # fmt: skip
    assert len(spans) == 2  # the last failed attempt counts too


def test_store_stats_count_overlapping_trouble_once() -> None:
    from ciflow.stores.base import StoreStats

    stats = StoreStats()
    stats.trouble(10.0, 12.0)
    stats.trouble(11.0, 13.0)  # another thread, overlapping
    stats.trouble(20.0, 21.0)
    assert stats.troubled == 4.0
