"""Blob transfers to and from the signed Azure URLs the results service hands out.

Uploads are one ``PUT`` with ``x-ms-blob-type: BlockBlob`` up to `SINGLE_PUT_MAX`, else
``comp=block`` blocks of `BLOCK_SIZE` and one ``comp=blocklist``; every PUT is retried by the
shared `Transport` (Azure PUTs are idempotent). Downloads stream the body into a consumer and
start again from the beginning when the transfer breaks off or the consumer finds the data
truncated or corrupt (`CorruptDownload`).
"""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar
from xml.sax.saxutils import escape

import requests

from ..base import StoreError
from ..transport import Retry, Transport
from .twirp import one_line

__all__ = ["BLOCK_SIZE", "CHUNK", "SINGLE_PUT_MAX", "Blobs", "CorruptDownload", "Pieces"]

T = TypeVar("T")

#: block size of streamed uploads; a single PUT is used up to this size
BLOCK_SIZE = 4 << 20
SINGLE_PUT_MAX = BLOCK_SIZE
#: bytes read or written at a time when streaming
CHUNK = 1 << 20
#: (connect, read) timeouts of blob transfers, seconds
BLOB_TIMEOUT = (10.0, 300.0)
#: Azure storage API version sent with blob requests
AZURE_VERSION = "2021-08-06"

#: a value to upload: called (again for a retry) to give its bytes in order
Pieces = Callable[[], Iterable[bytes | memoryview]]


class CorruptDownload(Exception):
    """A downloaded archive ended early or failed its checksum (the download starts again)."""


class Blobs:
    """Signed-URL blob PUTs and GETs over a `Transport` (counted as blob-upload/-download)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def _error(self, what: str, resp: requests.Response) -> StoreError:
        code = resp.headers.get("x-ms-error-code", "")
        if not code:
            found = re.search(r"<Code>([^<]*)</Code>", resp.text[:2000])
            code = found.group(1) if found else ""
        return StoreError(
            f"{self.transport.label}: {what} failed with HTTP {resp.status_code}"
            + (f" ({one_line(code)})" if code else "")
        )

    def put(self, url: str, body: bytes, headers: Mapping[str, str], what: str) -> None:
        """PUT ``body`` to a signed blob URL."""

        def read(resp: requests.Response) -> None:
            if resp.status_code not in (200, 201):
                raise self._error(what, resp)

        self.transport.send(
            "PUT", url, read, counter="blob-upload", what=what, timeout=BLOB_TIMEOUT,
            data=body, headers={"x-ms-version": AZURE_VERSION, **headers},
        )  # fmt: skip

    def upload(
        self, url: str, pieces: Pieces, total: int, content_type: str = "application/zip"
    ) -> str:
        """Upload the concatenated ``pieces`` (``total`` bytes) as a block blob; its sha256."""
        content = {"x-ms-blob-content-type": content_type}
        if total <= SINGLE_PUT_MAX:
            body = b"".join(pieces())
            if len(body) != total:
                raise StoreError(f"{self.transport.label}: the data changed while it was uploaded")
            self.put(url, body, {"x-ms-blob-type": "BlockBlob", **content}, "blob upload")
            return hashlib.sha256(body).hexdigest()
        sep = "&" if "?" in url else "?"
        digest = hashlib.sha256()
        ids: list[str] = []
        sent = 0
        for block in _blocks(pieces()):
            block_id = base64.b64encode(f"ciflow-{len(ids):010d}".encode()).decode()
            ids.append(block_id)
            digest.update(block)
            sent += len(block)
            quoted = urllib.parse.quote(block_id, safe="")
            self.put(f"{url}{sep}comp=block&blockid={quoted}", block, {}, "blob block upload")
        if sent != total:
            raise StoreError(f"{self.transport.label}: the data changed while it was uploaded")
        xml = '<?xml version="1.0" encoding="utf-8"?><BlockList>'
        xml += "".join(f"<Latest>{escape(i)}</Latest>" for i in ids) + "</BlockList>"
        self.put(
            f"{url}{sep}comp=blocklist",
            xml.encode(),
            {"Content-Type": "application/xml", **content},
            "blob block list",
        )
        return digest.hexdigest()

    def download(self, url: str, consume: Callable[[Iterator[bytes]], T]) -> T | None:
        """GET a signed blob URL and feed it to ``consume``; None if the blob is gone (404).

        A transfer that breaks off, or that ``consume`` finds truncated or corrupt
        (`CorruptDownload`), is retried from the start; ``consume`` must start afresh.
        """

        def read(resp: requests.Response) -> T | None:
            if resp.status_code == 404:
                return None
            if resp.status_code != 200:
                raise self._error("blob download", resp)
            try:
                return consume(resp.iter_content(CHUNK))
            except CorruptDownload as exc:
                raise Retry(f"download broke off ({type(exc).__name__}: {exc})") from exc

        return self.transport.send(
            "GET", url, read, counter="blob-download", what="blob download",
            timeout=BLOB_TIMEOUT, stream=True, headers={"x-ms-version": AZURE_VERSION},
        ).value  # fmt: skip


def _blocks(pieces: Iterable[bytes | memoryview]) -> Iterator[bytes]:
    """The concatenated ``pieces`` in blocks of `BLOCK_SIZE` (the last one shorter)."""
    buf = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        while view:
            take = BLOCK_SIZE - len(buf)
            buf += view[:take]
            view = view[take:]
            if len(buf) == BLOCK_SIZE:
                yield bytes(buf)
                buf = bytearray()
    if buf:
        yield bytes(buf)
