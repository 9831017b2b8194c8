"""The emulator's HTTP front: Twirp posts, signed blob transfers, the jobs API."""

from __future__ import annotations

import base64
import json
import re
import socket
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .model import (
    _CHUNK,
    _MAX_RPC_BODY,
    STORAGE_VERSION,
    BlobError,
    TwirpError,
    _copy,
)

if TYPE_CHECKING:
    from .service import GitHubEmulator


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    emulator: GitHubEmulator
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler: Twirp under /twirp/, blobs under /blob/."""

    protocol_version = "HTTP/1.1"
    _consumed = True
    server_version = "ciflow-github-emulator"
    timeout = 120
    # headers and body go out in separate writes: without TCP_NODELAY every answer would wait
    # for the client's delayed ACK (~40 ms a call)
    disable_nagle_algorithm = True

    @property
    def emu(self) -> GitHubEmulator:
        return cast(_Server, self.server).emulator

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the emulator does not log each request."""

    # -- request bodies --------------------------------------------------------------------------
    def _body(self) -> Iterator[bytes]:
        """The request body in chunks (Content-Length or chunked transfer encoding)."""
        self._consumed = False
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while size := int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16):
                yield from self._read_exact(size)
                self.rfile.readline(16)
            while self.rfile.readline(1024).strip():
                pass
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))
        self._consumed = True

    def _read_exact(self, size: int) -> Iterator[bytes]:
        while size > 0:
            data = self.rfile.read(min(_CHUNK, size))
            if not data:
                raise ConnectionError("client closed the connection mid-body")
            size -= len(data)
            yield data

    def _read_small(self, limit: int) -> bytes:
        data = bytearray()
        for chunk in self._body():
            data += chunk
            if len(data) > limit:
                self.close_connection = True
                raise TwirpError("malformed", "request body too large")
        return bytes(data)

    def _send(
        self, status: int, headers: dict[str, str], body: bytes = b"", head_only: bool = False
    ) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- Twirp -----------------------------------------------------------------------------------
    def do_POST(self) -> None:
        """A Twirp call."""
        parts = urlsplit(self.path).path.split("/")
        route = (parts[2], parts[3]) if len(parts) == 4 and parts[1] == "twirp" else ("", "")
        try:
            body = self._read_small(_MAX_RPC_BODY)
            if route not in self.emu._rpcs:
                raise TwirpError("bad_route", f"no handler for POST {urlsplit(self.path).path}")
        except TwirpError as err:
            return self._twirp_error(err)
        except ConnectionError:
            return self._drop()
        with self.emu._lock:
            self.emu._calls[route[1]] += 1
        fault = self.emu._draw_fault(route[1])
        if fault == "drop":
            return self._drop()
        if fault in ("429", "500", "503"):
            code = {"429": "resource_exhausted", "500": "internal", "503": "unavailable"}[fault]
            return self._twirp_error(TwirpError(code, f"injected fault {fault}"))
        try:
            result: dict[str, Any] | TwirpError = self.emu._rpc(
                *route,
                self.headers.get("Authorization"),
                self.headers.get("Content-Type", ""),
                body,
            )
        except TwirpError as err:
            result = err
        if fault == "drop_after":
            self._drop()
        elif isinstance(result, TwirpError):
            self._twirp_error(result)
        else:
            self._send(200, {"Content-Type": "application/json"}, json.dumps(result).encode())

    def _twirp_error(self, err: TwirpError) -> None:
        headers = {"Content-Type": "application/json"}
        if err.status == 429:
            headers["Retry-After"] = str(self.emu.faults.retry_after)
        self._send(err.status, headers, json.dumps({"code": err.code, "msg": err.msg}).encode())

    # -- blobs -----------------------------------------------------------------------------------
    def do_PUT(self) -> None:
        """Put Block, Put Block List or Put Blob."""
        self._blob("PUT")

    def do_GET(self) -> None:
        """Get Blob (whole or a range), or the REST jobs API under ``/repos/``."""
        url = urlsplit(self.path)
        if url.path.startswith("/repos/"):
            fault = self.emu._draw_fault("ListJobsForWorkflowRunAttempt")
            if fault in ("drop", "drop_after"):
                return self._drop()
            if fault is not None:
                status, body = int(fault), {"message": f"injected fault {fault}"}
                headers = {"Content-Type": "application/json"}
                if fault == "429":
                    headers["Retry-After"] = str(self.emu.faults.retry_after)
                return self._send(status, headers, json.dumps(body).encode())
            status, body, rest_headers = self.emu._list_jobs(
                url.path, parse_qs(url.query), self.headers.get("Authorization")
            )
            data = json.dumps(body).encode()
            return self._send(status, {"Content-Type": "application/json", **rest_headers}, data)
        self._blob("GET")

    def do_HEAD(self) -> None:
        """Get Blob Properties."""
        self._blob("HEAD")

    def _blob(self, verb: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        comp = query.get("comp", [""])[0].lower()
        op = {"GET": "GetBlob", "HEAD": "GetBlobProperties"}.get(
            verb, {"block": "PutBlock", "blocklist": "PutBlockList"}.get(comp, "PutBlob")
        )
        self._consumed = verb != "PUT"
        try:
            if not url.path.startswith("/blob/"):
                raise BlobError(404, "ResourceNotFound", "The specified resource does not exist.")
            key = unquote(url.path[len("/blob/") :])
            with self.emu._lock:
                self.emu._blob_calls[op] += 1
            fault = self.emu._draw_fault(None)
            if fault in ("drop", "drop_after"):
                return self._drop()
            if fault is not None:
                status = int(fault)
                raise BlobError(
                    status,
                    "ServerBusy" if status != 500 else "InternalError",
                    f"injected fault {fault}",
                )
            self.emu._check_signature(key, query, "w" if verb == "PUT" else "r")
            if comp not in ("", "block", "blocklist") or (comp and verb != "PUT"):
                raise BlobError(400, "InvalidQueryParameterValue", f"comp={comp} is not supported.")
            if verb == "PUT":
                return self._put(key, comp, query)
            return self._get(key, head_only=verb == "HEAD")
        except BlobError as err:
            if not self._consumed:
                for _ in self._body():
                    pass
            self._blob_error(err, head_only=verb == "HEAD")
        except (ConnectionError, ValueError):
            self._drop()

    def _common(self) -> dict[str, str]:
        return {
            "x-ms-request-id": str(uuid.uuid4()),
            "x-ms-version": STORAGE_VERSION,
            "Date": formatdate(usegmt=True),
        }

    def _blob_error(self, err: BlobError, head_only: bool) -> None:
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{err.code}</Code>'
            f"<Message>{err.msg}</Message></Error>"
        ).encode()
        headers = {**self._common(), "x-ms-error-code": err.code, "Content-Type": "application/xml"}
        self._send(err.status, headers, body, head_only=head_only)

    def _receive(self) -> Path:
        tmp = self.emu._store.temp_path()
        try:
            with open(tmp, "wb") as out:
                for chunk in self._body():
                    out.write(chunk)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _put(self, key: str, comp: str, query: dict[str, list[str]]) -> None:
        store = self.emu._store
        content_type = self.headers.get("x-ms-blob-content-type")
        headers = {**self._common(), "x-ms-request-server-encrypted": "true"}
        if comp == "block":
            block_id = query.get("blockid", [""])[0]
            try:
                if not base64.b64decode(block_id, validate=True):
                    raise ValueError(block_id)
            except ValueError:
                raise BlobError(
                    400,
                    "InvalidQueryParameterValue",
                    "Value for one of the query parameters specified in the request "
                    "URI is invalid (blockid).",
                ) from None
            tmp = self._receive()
            try:
                store.stage(key, block_id, tmp)
            except BlobError:
                tmp.unlink(missing_ok=True)
                raise
            return self._send(201, headers)
        if comp == "blocklist":
            try:
                root = ET.fromstring(self._read_small(_MAX_RPC_BODY))
            except (ET.ParseError, TwirpError):
                raise BlobError(
                    400, "InvalidXmlDocument", "XML specified is not syntactically valid."
                ) from None
            entries = [
                (child.tag, (child.text or "").strip())
                for child in root
                if child.tag in ("Latest", "Committed", "Uncommitted")
            ]
            blob = store.commit(key, entries, content_type)
        else:
            blob_type = self.headers.get("x-ms-blob-type")
            if blob_type != "BlockBlob":
                code = "MissingRequiredHeader" if blob_type is None else "InvalidHeaderValue"
                raise BlobError(400, code, "x-ms-blob-type must be BlockBlob.")
            tmp = self._receive()
            try:
                blob = store.put(key, tmp, content_type or self.headers.get("Content-Type"))
            except BlobError:
                tmp.unlink(missing_ok=True)
                raise
        headers.update({"ETag": blob.etag, "Last-Modified": formatdate(blob.modified, usegmt=True)})
        self._send(201, headers)

    def _get(self, key: str, head_only: bool) -> None:
        blob = self.emu._store.get(key)
        with blob.lock:
            if blob.path is None:
                raise BlobError(404, "BlobNotFound", "The specified blob does not exist.")
            src = open(blob.path, "rb")
            size, etag, modified = blob.size, blob.etag, blob.modified
        try:
            headers = {
                **self._common(),
                "Content-Type": blob.content_type,
                "ETag": etag,
                "Last-Modified": formatdate(modified, usegmt=True),
                "Accept-Ranges": "bytes",
                "x-ms-blob-type": "BlockBlob",
                "x-ms-creation-time": formatdate(blob.created, usegmt=True),
                "x-ms-lease-status": "unlocked",
                "x-ms-lease-state": "available",
                "x-ms-server-encrypted": "true",
            }
            if blob.filename:
                headers["Content-Disposition"] = (
                    f'attachment; filename="{blob.filename.encode("ascii", "replace").decode()}'
                    f"\"; filename*=UTF-8''{quote(blob.filename)}"
                )
            start, end, status = 0, size - 1, 200
            spec = self.headers.get("x-ms-range") or self.headers.get("Range")
            if spec:
                match = re.fullmatch(r"\s*bytes=(\d+)-(\d*)\s*", spec)
                if match is None or int(match[1]) >= size:
                    raise BlobError(
                        416,
                        "InvalidRange",
                        "The range specified is invalid for the current size of the resource.",
                    )
                start, status = int(match[1]), 206
                end = min(int(match[2]), size - 1) if match[2] else size - 1
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            headers["Content-Length"] = str(end - start + 1)
            self._send(status, headers, head_only=True)
            if not head_only:
                src.seek(start)
                _copy(src, self.wfile, end - start + 1)
        finally:
            src.close()
