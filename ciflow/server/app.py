"""The coordinator's ASGI app: the store protocol over HTTP on file stores it owns.

`StoreApp` is a raw ASGI application (no framework): ``ciflow serve`` runs it under uvicorn;
the routes are in `ciflow.server` (and docs/architecture.md, "ciflow serve and the http
store"). Each namespace is a `FileStore` in a folder of ``--data`` (``<data>/<namespace>``), so
creates keep the file store's atomicity, a restarted server finds everything again, and other
processes may read the folders. Blocking file work runs in a thread pool, never on the event loop.

Long polls (``/v1/wait``) wait on an `asyncio.Event` that every create or delete of a key under
their prefix sets (`Watch`): a waiter wakes as soon as the change is published, and looks at the
folder again every `RECHECK` seconds for writers that bypass the server. `StoreApp.stop` (on
SIGTERM/SIGINT) answers every long poll at once, so a graceful shutdown is not held up by them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import UsageError
from ..stores.base import StoreError, StoreUnavailable, check_key
from ..stores.file import FileStore
from ..stores.http import (
    API,
    CHUNK,
    CREATE_ID,
    DEFAULT_NAMESPACE,
    MAX_BODY,
    MAX_WAIT,
    NAMESPACE,
    REPLAYED,
    CodecError,
    Decoder,
    keys_digest,
)
from .auth import Tokens
from .exchange import Disconnected, Exchange, Receive, Send, TooLarge

__all__ = ["DEFAULT_MAX_BODY", "RECHECK", "StoreApp", "Watch"]

#: the largest body a PUT may carry (``--max-body``), decoded or as sent
DEFAULT_MAX_BODY = 2 << 30
#: how often a long poll looks at the folder again without a wake-up
RECHECK = 1.0
#: create ids remembered per namespace (to answer a retried create whose answer was lost)
REMEMBERED = 65536
#: the folder of ``--data`` that holds uploads while they arrive (not a namespace: it has a ~)
UPLOADS = ".uploads~"
WRITES = frozenset({"PUT", "DELETE"})


class Watch:
    """The long polls waiting in one namespace, by prefix; used on the event loop only."""

    def __init__(self) -> None:
        self._waiting: dict[asyncio.Event, str] = {}

    def register(self, prefix: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[event] = prefix
        return event

    def unregister(self, event: asyncio.Event) -> None:
        self._waiting.pop(event, None)

    def changed(self, key: str) -> None:
        """``key`` was created or deleted: wake the waits whose prefix it starts with."""
        for event, prefix in self._waiting.items():
            if key.startswith(prefix):
                event.set()

    def wake_all(self) -> None:
        for event in self._waiting:
            event.set()


class StoreApp:
    """The ASGI app of ``ciflow serve``; ``log`` gets one access-log line per request."""

    def __init__(
        self,
        data: Path,
        tokens: Tokens,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_wait: float = MAX_WAIT,
        log: Callable[[str], None] | None = None,
        threads: int = 32,
    ) -> None:
        self.data = Path(data).resolve()
        self.tokens, self.max_body, self.max_wait, self.log = tokens, max_body, max_wait, log
        self.uploads = self.data / UPLOADS
        try:
            self.data.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.uploads, ignore_errors=True)  # what a killed server left
            self.uploads.mkdir(exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot use --data {data}: {exc.strerror or exc}") from exc
        self.stopping = False
        self._stores: dict[str, FileStore] = {}
        self._watches: dict[str, Watch] = {}
        self._created: dict[str, OrderedDict[str, str]] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ciflow-serve")
        self.loop: asyncio.AbstractEventLoop | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def stop(self) -> None:
        """Start a graceful shutdown: answer every long poll now (call on the event loop)."""
        self.stopping = True
        for watch in self._watches.values():
            watch.wake_all()

    def store(self, namespace: str) -> FileStore:
        store = self._stores.get(namespace)
        if store is None:
            store = self._stores[namespace] = FileStore(f"file://{self.data / namespace}")
        return store

    def watch(self, namespace: str) -> Watch:
        return self._watches.setdefault(namespace, Watch())

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets
        exchange = Exchange(scope, receive, send)
        began = time.perf_counter()
        try:
            await self._handle(exchange)
        except Exception as exc:
            if exchange.status:
                raise  # the answer had begun: uvicorn drops the connection
            await exchange.error(500, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._log(exchange, began)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.loop = asyncio.get_running_loop()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._pool.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _log(self, exchange: Exchange, began: float) -> None:
        if self.log is None:
            return
        ms = (time.perf_counter() - began) * 1000
        target = exchange.path
        if "prefix" in exchange.query:
            target += f"?prefix={exchange.query['prefix']}"
        target = "".join(c if c.isprintable() and c != " " else "?" for c in target)[:300]
        self.log(
            f"{exchange.client} {exchange.method} {target} {exchange.status or 499} "
            f"in={exchange.received} out={exchange.sent} {ms:.1f}ms"
        )

    # -- routing ----------------------------------------------------------------------------

    async def _handle(self, ex: Exchange) -> None:
        if ex.path == "/healthz":
            if ex.method not in ("GET", "HEAD"):
                await ex.error(405, "use GET", headers=[("allow", "GET, HEAD")])
                return
            state = {"ok": not self.stopping, "version": __version__}
            await ex.json(503 if self.stopping else 200, state)
            return
        route = _route(ex.path)
        if route is None:
            await ex.error(404, f"no such route: {ex.path[:200]} (the API is under /{API}/)")
            return
        namespace, action, key = route
        refusal = self.tokens.check(ex.headers.get("authorization"), namespace, ex.method in WRITES)
        if refusal is not None:
            bearer = (
                [("www-authenticate", 'Bearer realm="ciflow"')] if refusal.status == 401 else []
            )
            await ex.error(refusal.status, refusal.message, headers=bearer)
            return
        ex.extra_headers.append((MAX_BODY, str(self.max_body)))
        handlers = _HANDLERS.get(action, {})
        handler = handlers.get(ex.method)
        if handler is None:
            allow = ", ".join(handlers)
            await ex.error(405, f"{ex.method} is not allowed here", headers=[("allow", allow)])
            return
        try:
            await handler(self, ex, namespace, key)
        except (UsageError, CodecError, TooLarge, Disconnected, StoreError, OSError) as exc:
            if ex.status:
                raise
            await _refuse(ex, exc, self.max_body)

    # -- handlers ---------------------------------------------------------------------------

    async def create(self, ex: Exchange, namespace: str, key: str) -> None:
        check_key(key)
        if ex.headers.get("if-none-match", "").strip() != "*":
            await ex.error(428, "a PUT creates a key only if it is absent: send If-None-Match: *")
            return
        decoder = Decoder(ex.headers.get("content-encoding", "identity"))
        length = ex.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise TooLarge
        create_id = ex.headers.get(CREATE_ID.lower(), "")
        store = self.store(namespace)
        if await self._run(store.exists, key):
            await self._exists(ex, namespace, key, create_id)  # the rest of the body is dropped
            return
        body = await ex.read_body(decoder, self.max_body, self.uploads, self._run)
        try:
            if body.data is not None:
                created = await self._run(store.create, key, body.data)
            else:
                created = await self._run(store.create_from_file, key, body.path)
        finally:
            await self._run(body.discard)
        if not created:
            await self._exists(ex, namespace, key, create_id)
            return
        if create_id:
            memo = self._created.setdefault(namespace, OrderedDict())
            memo[key] = create_id
            while len(memo) > REMEMBERED:
                memo.popitem(last=False)
        self.watch(namespace).changed(key)
        await ex.reply(201)

    async def _exists(self, ex: Exchange, namespace: str, key: str, create_id: str) -> None:
        """The answer to a create of an existing key: 412, or 201 to a retry of its creator."""
        memo = self._created.get(namespace)
        if create_id and memo is not None and memo.get(key) == create_id:
            await ex.reply(201, headers=[(REPLAYED, "1")])
            return
        await ex.error(412, f"{key!r} exists")

    async def get(self, ex: Exchange, namespace: str, key: str) -> None:
        check_key(key)
        # the file store's own open: it refuses links planted in its folder, never follows them
        src = await self._run(self.store(namespace)._open, key)
        if src is None:
            await ex.error(404, f"{key!r} does not exist")
            return
        try:
            size = os.fstat(src.fileno()).st_size
            await ex.stream_file(src, size, self._run, CHUNK)
        finally:
            src.close()

    async def head(self, ex: Exchange, namespace: str, key: str) -> None:
        check_key(key)
        found = await self._run(self.store(namespace).exists, key)
        await ex.reply(200 if found else 404)

    async def delete(self, ex: Exchange, namespace: str, key: str) -> None:
        check_key(key)
        await self._run(self.store(namespace).delete, key)
        self._created.get(namespace, OrderedDict()).pop(key, None)
        self.watch(namespace).changed(key)
        await ex.reply(204)

    async def list_keys(self, ex: Exchange, namespace: str, key: str) -> None:
        keys = await self._run(self.store(namespace).list, ex.query.get("prefix", ""))
        await ex.json(200, {"keys": keys})

    async def wait(self, ex: Exchange, namespace: str, key: str) -> None:
        """Answer once the keys under the prefix are not the ``known`` set, or at the timeout."""
        prefix, known = ex.query.get("prefix", ""), ex.query.get("known", "")
        try:
            timeout = min(max(float(ex.query.get("timeout", "0")), 0.0), self.max_wait)
        except ValueError:
            raise UsageError("timeout= takes seconds") from None
        store, watch = self.store(namespace), self.watch(namespace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = watch.register(prefix)  # before listing: no create slips in between
            try:
                keys = await self._run(store.list, prefix)
                remaining = deadline - loop.time()
                if keys_digest(keys) != known or self.stopping or remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, RECHECK))
            finally:
                watch.unregister(event)
        await ex.json(200, {"keys": keys})


_Handler = Callable[[StoreApp, Exchange, str, str], Any]
_HANDLERS: dict[str, dict[str, _Handler]] = {
    "keys": {
        "PUT": StoreApp.create,
        "GET": StoreApp.get,
        "HEAD": StoreApp.head,
        "DELETE": StoreApp.delete,
    },
    "list": {"GET": StoreApp.list_keys},
    "wait": {"GET": StoreApp.wait},
}


def _route(path: str) -> tuple[str, str, str] | None:
    """``(namespace, action, key)`` of ``[/<namespace>]/v1/<action>[/<key>]``, else None."""
    head, _, rest = path.lstrip("/").partition("/")
    namespace = DEFAULT_NAMESPACE
    if head != API:
        namespace = head
        api, _, rest = rest.partition("/")
        if api != API or not NAMESPACE.fullmatch(namespace) or namespace == "healthz":
            return None
    action, slash, key = rest.partition("/")
    if action not in _HANDLERS or (action == "keys") != bool(slash and key):
        return None
    return namespace, action, key


async def _refuse(ex: Exchange, exc: Exception, max_body: int) -> None:
    """The answer to a request that failed before its answer began."""
    if isinstance(exc, Disconnected):
        return  # nobody to answer
    if isinstance(exc, TooLarge):
        await ex.error(413, f"the body is larger than this server's --max-body ({max_body} bytes)")
    elif isinstance(exc, CodecError):
        status = 415 if "unsupported" in str(exc) else 400
        await ex.error(status, str(exc))
    elif isinstance(exc, UsageError):
        await ex.error(400, str(exc))
    elif isinstance(exc, StoreUnavailable):  # the server's disk: full, read-only, permissions
        await ex.error(507, str(exc))
    elif isinstance(exc, OSError):  # writing the upload's temporary file
        await ex.error(507, f"the server cannot keep the upload: {exc.strerror or exc}")
    else:
        await ex.error(409, str(exc))  # a key clash (a key cannot also be a folder)
