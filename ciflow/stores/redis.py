"""The Redis store, ``redis://`` and ``rediss://`` (TLS): one server shared by every runner.

``redis://[USER[:PASSWORD]@]HOST[:PORT][/DB][?ttl=SECONDS&prefix=NS&ca_file=PATH&timeout=S]``;
the password from the URL, else ``CIFLOW_STORE_PASSWORD``, else ``REDISCLI_AUTH``; the CA file
from ``ca_file=``, else ``CIFLOW_STORE_CA_FILE``. Every key written lives ``ttl`` (7 days; 0:
for ever); one call retries an unreachable server for ``timeout`` (30 s), then `StoreFlaky`; a
refused password, ACL permission or certificate is `StoreDenied` at once. Under the prefix ``P``
(``ciflow:``; ``~`` is in no key), ``P<key>`` is a value of up to `CHUNK` bytes as they are, or
a hash ``{size, chunks, id}`` over chunks ``P~chunk:<id>:<n>`` (written first, published by the
create script if the key is absent). ``P~index`` (score 0: `list` is a ``ZRANGEBYLEX``) holds
every key, ``P~expiry`` when each expires (due ones leave the index at the next create or list).
Creates publish their key on ``P~new@<db>``, where `wait` listens (docs/architecture.md, "The
redis store"). Creates, deletes and listings are Lua scripts: atomic, one round trip.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from ..errors import UsageError
from .base import Sink, Store, StoreDenied, StoreError, StoreFlaky, check_key, into_file

if TYPE_CHECKING:
    import redis

__all__ = ["CHUNK", "RedisStore", "RedisTarget", "parse_url"]

T = TypeVar("T")

CHUNK = 2 << 20  #: values larger than this are stored (and streamed) as chunks of this size
DEFAULT_TTL, DEFAULT_TIMEOUT, DEFAULT_PREFIX = 7 * 86400.0, 30.0, "ciflow:"
PENDING_MS = 86400 * 1000  #: how long the chunks of an upload that never published live
BACKOFF, BACKOFF_CAP = 0.05, 2.0  #: pauses between the tries of one call, doubling to the cap
SOCKET_TIMEOUT = 15.0  #: a read that gets nothing this long (at most ``timeout``) fails
USAGE = "redis://[USER[:PASSWORD]@]HOST[:PORT][/DB][?ttl=SECONDS&prefix=NS&ca_file=PATH&timeout=S]"
ACL = "~{p}* &{p}* +@read +@write +@scripting +@pubsub +@connection +time -@dangerous"
_PREFIX = re.compile(r"[A-Za-z0-9._:{}-]+")
_OPTIONS = ("ttl", "prefix", "ca_file", "timeout")

_LIB = """
local function now() local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000) end
local function prune(idx, exp, ms)  -- expired keys leave the index
  local due = redis.call('ZRANGEBYSCORE', exp, '-inf', ms)
  for i = 1, #due, 1000 do redis.call('ZREM', idx, unpack(due, i, math.min(i + 999, #due))) end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', ms) end
end
local function expire(k, ttl)
  if ttl == '0' then redis.call('PERSIST', k) else redis.call('PEXPIRE', k, ttl) end
end
local function add(set, ttl, score, key)  -- a set lives as long as its longest-lived member
  local fresh = redis.call('ZADD', set, score, key) == 1 and redis.call('ZCARD', set) == 1
  local left = redis.call('PTTL', set)
  if ttl == '0' or fresh or (left >= 0 and left < tonumber(ttl)) then expire(set, ttl) end
end
"""
# KEYS: value, index, expiry, the keys above it, its chunks; ARGV: key, ttl ms ('0': never),
# channel, how many keys above, then the value, or '' and the upload id and size
_CREATE = """
local key, ttl, first, upload = ARGV[1], ARGV[2], 4 + ARGV[4], ARGV[6]
if upload and redis.call('TYPE', KEYS[1]).ok == 'hash'
  and redis.call('HGET', KEYS[1], 'id') == upload then return {1} end  -- a retry: published
local ms = now()
prune(KEYS[2], KEYS[3], ms)
local verdict = redis.call('EXISTS', KEYS[1]) == 1 and {0} or nil
for i = 4, #KEYS do  -- no key above may exist, every chunk must
  if not verdict and (redis.call('EXISTS', KEYS[i]) == 1) == (i < first) then verdict = {-1,
    i < first and KEYS[i] .. ' is a value: a key cannot also be a folder of other keys'
    or 'chunks of its upload expired before it ended (an upload may take a day)'} end
end
local below = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. key .. '/', '(' .. key .. '0',
  'LIMIT', 0, 1)
if not verdict and #below > 0 then
  verdict = {-1, 'it is a folder of other keys (' .. below[1] .. '): a key cannot be both'} end
if verdict then
  for i = first, #KEYS do redis.call('UNLINK', KEYS[i]) end
  return verdict
end
if not upload then redis.call('SET', KEYS[1], ARGV[5], 'NX') else
  redis.call('HSET', KEYS[1], 'size', ARGV[7], 'chunks', #KEYS - first + 1, 'id', upload) end
for i = 1, #KEYS do if i == 1 or i >= first then expire(KEYS[i], ttl) end end
add(KEYS[2], ttl, 0, key)
if ttl == '0' then redis.call('ZREM', KEYS[3], key) else add(KEYS[3], ttl, ms + ttl, key) end
redis.call('PUBLISH', ARGV[3], key)
return {1}
"""
# KEYS: value, index, expiry; ARGV: key, the chunks' name start
_DELETE = """
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local m = redis.call('HMGET', KEYS[1], 'id', 'chunks')
  for i = 0, (tonumber(m[2]) or 0) - 1 do redis.call('UNLINK', ARGV[2] .. m[1] .. ':' .. i) end
end
redis.call('UNLINK', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
"""
# KEYS: index, expiry; ARGV: the ZRANGEBYLEX bounds
_LIST = """
prune(KEYS[1], KEYS[2], now())
return redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2])
"""


#: what a ``redis://`` URL says; ``shown`` is the URL with its password masked
class RedisTarget(NamedTuple):
    tls: bool
    host: str
    port: int
    db: int
    user: str | None
    password: str | None
    ttl_ms: int
    prefix: str
    ca_file: str | None
    timeout: float
    shown: str


def _seconds(url: str, name: str, text: str) -> float:
    with contextlib.suppress(ValueError):
        if 0 <= (value := float(text)) < float("inf"):
            return value
    raise UsageError(f"redis store URL {url}: {name}={text!r} is not a number of seconds >= 0")


def parse_url(url: str, env: Mapping[str, str]) -> RedisTarget:
    """Read a ``redis://`` or ``rediss://`` URL; `UsageError` naming the mistake otherwise."""
    parts = urlsplit(url)
    user = parts.username or ""
    auth = f"{user}:***@" if parts.password is not None else f"{user}@" if user else ""
    shown = urlunsplit(parts._replace(netloc=auth + parts.netloc.rpartition("@")[2]))
    query = {name: values[-1] for name, values in parse_qs(parts.query, True).items()}
    unknown, path = sorted(set(query) - set(_OPTIONS)), parts.path.strip("/")
    port = -1
    with contextlib.suppress(ValueError):
        port = parts.port or 6379
    why = (
        "use redis:// or rediss://" if parts.scheme not in ("redis", "rediss") else
        "it names no host" if not parts.hostname else
        "its port is not a number" if port < 0 else
        f"its database {path!r} is not a number" if path and not path.isdigit() else
        f"unknown option {unknown[0]!r} (known: {', '.join(_OPTIONS)})" if unknown else
        "prefix= must be [A-Za-z0-9._:{}-]+" if not _PREFIX.fullmatch(query.get("prefix", "x"))
        else None
    )  # fmt: skip
    if why:
        raise UsageError(f"invalid redis store URL {shown}: {why}; use {USAGE}")
    tls = parts.scheme == "rediss"
    ca_file = query.get("ca_file") or (env.get("CIFLOW_STORE_CA_FILE") if tls else None) or None
    if ca_file and (not tls or not Path(ca_file).is_file()):
        why = f"the CA file {ca_file} does not exist" if tls else "ca_file= needs rediss://"
        raise UsageError(f"redis store URL {shown}: {why}")
    password = unquote(parts.password or "") or env.get("CIFLOW_STORE_PASSWORD")
    ttl = _seconds(shown, "ttl", query.get("ttl", str(DEFAULT_TTL)))
    return RedisTarget(
        tls, str(parts.hostname), port, int(path or 0), unquote(user) or None,
        password or env.get("REDISCLI_AUTH") or None, max(1, round(ttl * 1000)) if ttl else 0,
        query.get("prefix", DEFAULT_PREFIX), ca_file,
        _seconds(shown, "timeout", query.get("timeout", str(DEFAULT_TIMEOUT))), shown,
    )  # fmt: skip


class _Manifest(NamedTuple):
    id: str
    size: int
    chunks: int


def _why(exc: BaseException) -> str:
    code = getattr(exc, "status_code", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{code} {text}" if code and not text.startswith(code) else text


def _read(src: BinaryIO, path: Path, size: int) -> bytes:
    try:
        return src.read(size)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc


class RedisStore(Store):
    """A store on a Redis server; safe for many threads, processes and machines."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import redis
        except ImportError:
            raise UsageError("the redis store needs the redis package: install ciflow[redis] "
                             "(pip install 'ciflow[redis]')") from None  # fmt: skip
        from ..execution.masking import MASKER

        t = self.target = parse_url(url, os.environ)
        MASKER.add(t.password)
        MASKER.add(urlsplit(url).password)  # as written in the URL (percent-encoded)
        self._client: redis.Redis = redis.Redis(
            host=t.host, port=t.port, db=t.db, username=t.user, password=t.password,
            ssl=t.tls, ssl_ca_certs=t.ca_file, protocol=2, client_name="ciflow",
            socket_timeout=min(SOCKET_TIMEOUT, max(t.timeout, 1.0)),
            socket_connect_timeout=min(5.0, max(t.timeout, 1.0)),
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # retried by `_call`
        )  # fmt: skip
        p = t.prefix
        self._index, self._expiry, self._chunk = f"{p}~index", f"{p}~expiry", f"{p}~chunk:"
        self._channel, self._ttl = f"{p}~new@{t.db}", str(t.ttl_ms)
        self._scripts = {name: self._client.register_script(_LIB + body) for name, body in
                         (("create", _CREATE), ("delete", _DELETE), ("list", _LIST))}  # fmt: skip
        self._cond = threading.Condition()
        self._waiters: dict[threading.Event, tuple[str, frozenset[str]]] = {}
        self._listener: threading.Thread | None = None
        self._subscribed, self._refused = False, None  # type: tuple[bool, BaseException | None]
        self._closed = threading.Event()

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Write ``data`` under ``key`` if absent (atomic). True if written."""
        check_key(key)
        self.stats.add("create")
        if len(data) > CHUNK:
            view = memoryview(data)
            return self._upload(key, (view[i : i + CHUNK] for i in range(0, len(view), CHUNK)))
        return self._publish(key, [], [data])

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, uploading ``path`` chunk by chunk (never whole in memory)."""
        check_key(key)
        self.stats.add("create_from_file")
        try:
            src = open(path, "rb")
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        with src:
            if os.fstat(src.fileno()).st_size <= CHUNK:
                if len(data := _read(src, path, CHUNK + 1)) <= CHUNK:
                    return self._publish(key, [], [data])
                src.seek(0)
            return self._upload(key, iter(functools.partial(_read, src, path, CHUNK), b""))

    def get(self, key: str) -> bytes | None:
        """The value of ``key`` (a chunked one assembled), or None if absent."""
        check_key(key)
        self.stats.add("get")
        head = self._head(key)
        try:
            return b"".join(self._pieces(key, head)) if isinstance(head, _Manifest) else head
        except KeyError:  # deleted while read
            return None

    def get_to_file(self, key: str, path: Path) -> bool:
        """Stream the value of ``key`` into ``path`` chunk by chunk (replaced when complete)."""
        check_key(key)
        self.stats.add("get_to_file")
        if (head := self._head(key)) is None:
            return False
        pieces = [head] if isinstance(head, bytes) else self._pieces(key, head)

        def fetch(sink: Sink) -> bool:
            write = sink()
            try:
                for piece in pieces:
                    write(piece)
            except KeyError:  # deleted while read
                return False
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            return True

        return into_file(Path(path), fetch)

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value: one ``EXISTS``."""
        check_key(key)
        self.stats.add("exists")
        look = functools.partial(self._client.exists, self._key(key))
        return bool(self._call(f"look up {key!r}", look))

    def list(self, prefix: str) -> builtins.list[str]:
        """Sorted keys starting with ``prefix``, from the index (one ``ZRANGEBYLEX``)."""
        self.stats.add("list")
        raw = prefix.encode()
        bounds = [b"[" + raw, b"(" + raw + b"\xff"] if prefix else [b"-", b"+"]
        found = self._run("list", f"list {prefix!r}", [self._index, self._expiry], bounds)
        return [k.decode() for k in found]

    def delete(self, key: str) -> None:
        """Remove ``key`` (and its chunks) if present."""
        check_key(key)
        self.stats.add("delete")
        keys = [self._key(key), self._index, self._expiry]
        self._run("delete", f"delete {key!r}", keys, [key, self._chunk])

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """`Store.wait`: lists again only when a create under ``prefix`` is announced, or the
        subscription was made again after a lost connection (``poll`` is not needed)."""
        woken, known = threading.Event(), frozenset(known)
        with self._cond:
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, daemon=True)
                self._listener.start()
            self._waiters[woken] = (prefix, known)
            self._cond.wait_for(lambda: self._subscribed or self._refused is not None,
                                timeout=max(0.0, deadline - time.monotonic()))  # fmt: skip
        try:
            if self._refused is not None:
                raise self._denied(self._refused)
            while True:
                woken.clear()
                keys = self.list(prefix)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or any(k not in known for k in keys):
                    return keys
                woken.wait(remaining)
        finally:
            with self._cond:
                del self._waiters[woken]

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        if self._listener is not None and self._subscribed:
            with contextlib.suppress(Exception):  # wakes the listener's read: one try
                self._client.publish(self._channel, b"")
            self._listener.join(timeout=1.0)
        self._client.close()

    # -- helpers -----------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.target.prefix + key

    def _run(self, script: str, what: str, keys: builtins.list[str], args: Any) -> Any:
        return self._call(what, lambda: self._scripts[script](keys=keys, args=args))

    def _upload(self, key: str, pieces: Iterable[bytes | memoryview]) -> bool:
        """Write the chunks under a new id, then publish them as ``key`` if it is absent."""
        if self.exists(key):
            return False  # a cheap early answer: the script decides
        upload, size, names = secrets.token_hex(12), 0, builtins.list[str]()
        try:
            for piece in pieces:
                names.append(f"{self._chunk}{upload}:{len(names)}")
                put = functools.partial(self._client.set, names[-1], piece, px=PENDING_MS)
                self._call(f"upload {key!r}", put)
                size += len(piece)
        except BaseException:
            with contextlib.suppress(Exception):  # else they expire after a day
                self._client.unlink(*names)
            raise
        return self._publish(key, names, [b"", upload, size])

    def _publish(self, key: str, names: builtins.list[str], tail: builtins.list[Any]) -> bool:
        """Create ``key`` from a value or from uploaded chunks: the one create script."""
        parts, tries = key.split("/"), [0]
        above = [self._key("/".join(parts[:i])) for i in range(1, len(parts))]
        keys = [self._key(key), self._index, self._expiry, *above, *names]
        args = [key, self._ttl, self._channel, len(above), *tail]

        def create() -> Any:
            tries[0] += 1
            return self._scripts["create"](keys=keys, args=args)

        if (code := int((answer := self._call(f"create {key!r}", create))[0])) < 0:
            raise StoreError(f"cannot store key {key!r}: {answer[1].decode()}")
        # a small value's lost answer: the retry that found the key may have found our write
        return code == 1 or (not names and tries[0] > 1 and self._head(key) == tail[0])

    def _head(self, key: str) -> bytes | _Manifest | None:
        """A small value's bytes, a chunked value's manifest, or None."""
        rkey = self._key(key)

        def read() -> Any:
            try:
                return self._client.get(rkey)
            except Exception as exc:  # a chunked value's manifest is a hash
                if not str(exc).startswith("WRONGTYPE"):
                    raise
            return self._client.hgetall(rkey) or None

        if (found := self._call(f"read {key!r}", read)) is None or isinstance(found, bytes):
            return found
        try:
            return _Manifest(found[b"id"].decode(), int(found[b"size"]), int(found[b"chunks"]))
        except (KeyError, ValueError):
            raise StoreError(f"{self.target.shown}: {rkey} is a hash ciflow did not write; "
                             "delete it or pick another ?prefix=") from None  # fmt: skip

    def _pieces(self, key: str, head: _Manifest) -> Iterator[bytes]:
        """The chunks of ``head`` in order; `KeyError` if the value was deleted meanwhile."""
        size, shown = 0, self.target.shown
        for n in range(head.chunks):
            name = f"{self._chunk}{head.id}:{n}"
            piece: Any = self._call(f"read {key!r}", functools.partial(self._client.get, name))
            if piece is None:
                if self._head(key) is None:
                    raise KeyError(key)
                raise StoreError(f"{shown}: {name}, chunk {n} of {key!r}, is gone: it was "
                                 "replaced while read or deleted outside ciflow; try again or "
                                 "delete the key")  # fmt: skip
            size += len(piece)
            yield piece
        if size != head.size:
            raise StoreError(f"{shown}: {key!r} holds {size} bytes, not {head.size}: delete it")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, tried again with capped backoff for up to ``timeout`` seconds while the
        server cannot be reached; one-line errors naming the store (password masked)."""
        import redis
        from redis import exceptions as ex

        began, delay, failed, shown = time.monotonic(), BACKOFF, False, self.target.shown
        transient = (redis.ConnectionError, redis.TimeoutError, ex.TryAgainError, ex.ReadOnlyError)
        denied = (ex.AuthenticationError, ex.AuthorizationError, ex.NoPermissionError,
                  ex.AuthenticationWrongNumberOfArgsError)  # fmt: skip
        try:
            while True:
                try:
                    return fn()
                except denied as exc:
                    raise self._denied(exc) from None
                except transient as exc:
                    if "certificate verify failed" in str(exc).lower():
                        raise StoreDenied(f"{shown}: the server's TLS certificate is not trusted "
                                          f"({_why(exc)}); pass ?ca_file=PATH or set "
                                          "CIFLOW_STORE_CA_FILE") from None  # fmt: skip
                    failed, spent = True, time.monotonic() - began
                    if spent + delay > self.target.timeout:
                        raise StoreFlaky(f"{shown}: cannot {what}: no answer for {spent:.1f}s "
                                         f"({_why(exc)}); check that the server runs and the "
                                         "URL, or allow longer with ?timeout=SECONDS"
                                         ) from None  # fmt: skip
                    self.stats.add("retries")
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, BACKOFF_CAP)
                except redis.RedisError as exc:  # e.g. OOM: the server is full
                    raise StoreError(f"{shown}: cannot {what}: {_why(exc)}") from None
        finally:
            if failed:
                self.stats.trouble(began, time.monotonic())

    def _denied(self, exc: BaseException) -> StoreDenied:
        from redis.exceptions import NoPermissionError

        t = self.target
        who = f"user {t.user!r}" if t.user else "the default user"
        fix = (f"grant it {ACL.format(p=t.prefix)} (docs/architecture.md, The redis store)"
               if isinstance(exc, NoPermissionError) else f"{'check' if t.password else 'give'} "
               f"{'the user and ' if t.user else ''}the password in the URL or "
               "CIFLOW_STORE_PASSWORD")  # fmt: skip
        return StoreDenied(f"{t.shown}: the server refused {who} ({_why(exc)}); {fix}")

    def _listen(self) -> None:
        """The listener thread: subscribed to the channel, it wakes the waits a new key
        concerns. It reconnects after a lost connection with capped backoff (50 ms to 1 s);
        the new subscription wakes every wait, which lists again (creates meanwhile were not
        heard). Dead connections are found by redis-py's TCP keepalive (30 s idle, 3 probes)."""
        from redis.exceptions import AuthenticationError, NoPermissionError

        delay = BACKOFF
        while not self._closed.is_set() and self._refused is None:  # refused: for good
            conn: Any = self._client.connection_pool.make_connection()
            try:
                conn.connect()
                conn.send_command("SUBSCRIBE", self._channel)
                while not self._closed.is_set():
                    kind, _, *data = conn.read_response(timeout=None)
                    again = kind == b"subscribe"
                    key = data[0].decode() if kind == b"message" else ""
                    with self._cond:
                        self._subscribed = self._subscribed or again
                        self._cond.notify_all()
                        for woken, (prefix, known) in self._waiters.items():
                            if again or (key.startswith(prefix) and key not in known):
                                woken.set()
            except (AuthenticationError, NoPermissionError) as exc:
                self._refused = exc
            except Exception:  # noqa: S110 - a lost or refused connection: try again
                pass
            finally:
                conn.disconnect()
            with self._cond:
                delay = BACKOFF if self._subscribed else min(delay * 2, 1.0)
                self._subscribed = False
                self._cond.notify_all()
            self._closed.wait(delay * random.uniform(0.5, 1.0))
