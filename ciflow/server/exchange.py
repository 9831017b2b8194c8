"""One HTTP request and its answer on the raw ASGI interface, with streamed bodies.

`Exchange` reads a request's headers and query, streams its body (`Exchange.read_body`: decoded,
bounded by the size limit, spilled to a temporary file beyond `SPILL` bytes so a 1 GiB upload
never sits in memory) and sends the answer (whole, or streamed and optionally compressed), and
counts what went in and out for the access log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qs

from ..stores.http import COMPRESS_MIN, ENCODINGS, Decoder, Encoder

__all__ = ["SPILL", "Body", "Disconnected", "Exchange", "TooLarge"]

T = TypeVar("T")
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: runs a blocking call off the event loop (the app's thread pool)
Run = Callable[..., Awaitable[Any]]

#: a body larger than this goes to a temporary file while it arrives
SPILL = 1 << 20


def pick_encoding(accept: str) -> str | None:
    """The encoding to answer with for an ``Accept-Encoding`` header (zstd first), or None."""
    offered = set()
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        if params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            offered.add(name.strip().lower())
    return next((e for e in ENCODINGS if e in offered), None)


class TooLarge(Exception):
    """The body is larger than the server's limit (decoded or as sent)."""


class Disconnected(Exception):
    """The client went away before its body was complete."""


@dataclass
class Body:
    """A received body: in memory (``data``) or in a temporary file (``path``)."""

    data: bytes | None
    path: Path | None
    size: int

    def discard(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class Exchange:
    """A request (``method``, ``path``, ``query``, ``headers``) and what was answered."""

    def __init__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        self.query = {name: values[-1] for name, values in query.items()}
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else "-"
        self._receive, self._send = receive, send
        self.status = 0
        self.received = 0
        self.sent = 0
        self.extra_headers: list[tuple[str, str]] = []

    # -- the request body ---------------------------------------------------------------------

    async def read_body(self, decoder: Decoder, limit: int, spill: Path, run: Run) -> Body:
        """The whole (decoded) body; beyond `SPILL` bytes it goes to a file in ``spill``."""
        buffer = bytearray()
        handle: list[BinaryIO] = []
        tmp = spill / f"upload-{secrets.token_hex(8)}~"
        size = 0
        try:
            more = True
            while more:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                more = bool(message.get("more_body"))
                self.received += len(chunk)
                if self.received > limit:
                    raise TooLarge
                for piece in decoder.feed(chunk):  # lazily: a bomb stops at the limit
                    size += len(piece)
                    if size > limit:
                        raise TooLarge
                    buffer += piece
                    if len(buffer) >= SPILL:
                        await self._spill(buffer, handle, tmp, run)
                if not more:
                    tail = decoder.finish()  # what the decoder kept back; checks the end
                    size += len(tail)
                    if size > limit:
                        raise TooLarge
                    buffer += tail
            if not handle:
                return Body(bytes(buffer), None, size)
            await self._spill(buffer, handle, tmp, run)
            await run(handle[0].close)
            return Body(None, tmp, size)
        except BaseException:
            for fh in handle:
                fh.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @staticmethod
    async def _spill(buffer: bytearray, handle: list[BinaryIO], tmp: Path, run: Run) -> None:
        if not handle:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            handle.append(await run(open, tmp, "xb"))
        data = bytes(buffer)
        buffer.clear()
        await run(handle[0].write, data)

    # -- the answer ---------------------------------------------------------------------------

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1", "replace"))
            for k, v in (*headers, *self.extra_headers)
        ]
        await self._send({"type": "http.response.start", "status": status, "headers": raw})

    async def chunk(self, data: bytes, more: bool) -> None:
        self.sent += len(data)
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def reply(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """A whole answer; compressed when the client accepts it and it is worth it."""
        headers = [("content-type", content_type), *(headers or [])]
        encoding = pick_encoding(self.headers.get("accept-encoding", ""))
        if encoding and len(body) >= COMPRESS_MIN and self.method != "HEAD":
            encoder = Encoder(encoding)
            body = encoder.feed(body) + encoder.finish()
            headers += [("content-encoding", encoding), ("vary", "accept-encoding")]
        if self.method != "HEAD" and status != 204:
            headers.append(("content-length", str(len(body))))
        await self.start(status, headers)
        await self.chunk(b"" if self.method == "HEAD" else body, False)

    async def json(self, status: int, value: object, **kw: Any) -> None:
        await self.reply(status, json.dumps(value, separators=(",", ":")).encode(), **kw)

    async def error(self, status: int, message: str, **kw: Any) -> None:
        """An error answer: ``{"error": "<one line>"}`` (to a HEAD: ``X-Ciflow-Error``)."""
        message = " ".join(message.split())
        if self.method == "HEAD":
            kw["headers"] = [*kw.get("headers", []), ("x-ciflow-error", message[:300])]
        await self.json(status, {"error": message}, **kw)

    async def stream_file(self, src: BinaryIO, size: int, run: Run, chunk: int) -> None:
        """Send an open file in pieces of ``chunk`` bytes (compressed if the client asks)."""
        headers = [("content-type", "application/octet-stream")]
        encoding = pick_encoding(self.headers.get("accept-encoding", ""))
        encoder = Encoder(encoding) if encoding and size >= COMPRESS_MIN else None
        if encoder is not None:
            headers += [("content-encoding", encoder.encoding), ("vary", "accept-encoding")]
        else:
            headers.append(("content-length", str(size)))
        await self.start(200, headers)
        if size == 0:
            await self.chunk(encoder.finish() if encoder is not None else b"", False)
            return
        left = size
        while left > 0:
            data = await run(src.read, min(chunk, left))
            if not data:  # values are written once: only a failing disk ends one early
                raise OSError(f"the value file ended {left} bytes early")
            left -= len(data)
            if encoder is not None:
                data = encoder.feed(data) + (encoder.finish() if left == 0 else b"")
            await self.chunk(data, left > 0)
