"""One retrying HTTP transport, shared by the HTTP store backends and the CI jobs API client.

`Transport.send` makes one call: it sends the request and retries it on HTTP 408, 429, 5xx
(501 aside) and 403 with ``Retry-After`` (a secondary rate limit), on dropped connections and on
timeouts, at most ``max_attempts`` times (first try included). Between attempts it sleeps as long
as ``Retry-After`` says (seconds or an HTTP date; one above ``retry_after_max`` fails the call at
once with `RateLimited`) or a capped exponential backoff with jitter (``backoff_base`` doubling
to ``backoff_cap``, times 0.5-1). The ``sleep`` is injectable, so tests run without waiting.

Everything the transport cannot know stays with the caller: a ``read`` hook turns an answer into
the call's result (or raises `Retry` to try again, or a final error), ``detail`` describes a
retried answer (e.g. a Twirp error code) and ``fail_fast`` may refuse an answer before any retry.

The result is a `Sent`: the value and whether the request was retried after an *ambiguous*
failure, one that may have taken effect (a 5xx, a connection dropped after sending). A create
whose answer was lost may have happened; rate limits and connect timeouts are not ambiguous.

A ``count`` callback sees each HTTP attempt (by the call's ``counter`` name) and each retry
(``"retries"``): the store backends pass their `StoreStats`. A ``trouble`` callback gets the
monotonic span of every failed attempt and the pause after it (`StoreStats.trouble`): time the
caller could not rely on the service, which liveness observers forgive.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import requests

from .._version import __version__
from .base import StoreFlaky, StoreUnavailable

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "MAX_ATTEMPTS",
    "RETRY_AFTER_MAX",
    "RateLimited",
    "Retry",
    "Sent",
    "Transport",
    "retry_after_seconds",
]

T = TypeVar("T")

#: attempts per call (first try included), and the backoff between them (seconds)
MAX_ATTEMPTS = 6
BACKOFF_BASE = 1.0
BACKOFF_CAP = 30.0
#: the longest ``Retry-After`` waited for; a longer one fails the call at once
RETRY_AFTER_MAX = 300.0
#: (connect, read) timeouts of a call unless it gives its own, seconds
TIMEOUT = (10.0, 60.0)
#: what `Transport.count` is called with before each pause between attempts
RETRIES = "retries"

#: errors while ``read`` consumes an answer that mean the connection went away
_BROKEN = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
#: statuses worth another attempt: timeouts, rate limits, server errors (501 never heals)
RETRY_STATUS = frozenset({408, 429} | set(range(500, 600)) - {501})


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or HTTP date), None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Retry(Exception):
    """One attempt failed in a way worth retrying; raised by the transport or a ``read`` hook.

    ``ambiguous``: the request may have taken effect (True unless it surely did not).
    """

    def __init__(self, why: str, retry_after: float | None = None, ambiguous: bool = True) -> None:
        super().__init__(why)
        self.why, self.retry_after, self.ambiguous = why, retry_after, ambiguous


class RateLimited(StoreUnavailable):
    """The service asked to retry later than the transport waits (``retry_after`` seconds)."""

    def __init__(self, label: str, what: str, why: str, retry_after: float) -> None:
        super().__init__(
            f"{label}: {what} rate limited: the service asks to retry after {retry_after:.0f} s"
        )
        self.what, self.why, self.retry_after = what, why, retry_after


@dataclass(frozen=True)
class Sent(Generic[T]):
    """The outcome of one call: what ``read`` made of the answer, and how it got there."""

    value: T
    #: an earlier attempt failed in a way that may have taken effect
    ambiguous: bool
    #: HTTP attempts made (first try included)
    attempts: int


class Transport:
    """Sends HTTP requests over one `requests.Session`, retrying transient failures."""

    def __init__(
        self,
        label: str,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        retry_after_max: float = RETRY_AFTER_MAX,
        count: Callable[[str], None] | None = None,
        trouble: Callable[[float, float], None] | None = None,
    ) -> None:
        self.label, self.sleep, self.max_attempts = label, sleep, max(1, max_attempts)
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.retry_after_max = retry_after_max
        self.count = count or (lambda _op: None)
        self.trouble = trouble or (lambda _began, _ended: None)
        self.session = session or requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"ciflow/{__version__}"
        self._rng = random.Random()

    def close(self) -> None:
        self.session.close()

    def send(
        self,
        method: str,
        url: str,
        read: Callable[[requests.Response], T],
        *,
        counter: str,
        what: str | None = None,
        timeout: tuple[float, float] = TIMEOUT,
        detail: Callable[[requests.Response], str] | None = None,
        fail_fast: Callable[[requests.Response], None] | None = None,
        **kw: Any,
    ) -> Sent[T]:
        """Send ``method url`` (``kw`` go to `requests.Session.request`) until ``read`` returns.

        ``read`` gets each answer the transport does not retry itself (the response is closed
        afterwards, so a streamed body must be consumed there). ``detail`` adds to the
        ``HTTP <status>`` of a retried answer; ``fail_fast`` sees every answer first and may
        raise. Gives up with `StoreFlaky` after ``max_attempts`` (`RateLimited` when asked
        to wait too long); the message names ``what`` (default: ``counter``).
        """

        def attempt() -> T:
            self.count(counter)
            try:
                resp = self.session.request(method, url, timeout=timeout, **kw)
            except requests.ConnectTimeout as exc:
                raise Retry(
                    f"connection timed out ({type(exc).__name__})", ambiguous=False
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise Retry(f"connection failed ({type(exc).__name__})") from exc
            with resp:
                if fail_fast is not None:
                    fail_fast(resp)
                transient = self.transient(resp, detail)
                if transient is not None:
                    raise transient
                try:
                    return read(resp)
                except _BROKEN as exc:  # a streamed body that stopped coming
                    raise Retry(f"the answer broke off ({type(exc).__name__}: {exc})") from exc

        return self.retrying(what or counter, attempt)

    @staticmethod
    def transient(
        resp: requests.Response, detail: Callable[[requests.Response], str] | None = None
    ) -> Retry | None:
        """A `Retry` for an answer worth another attempt, else None."""
        status = resp.status_code
        after = retry_after_seconds(resp.headers.get("Retry-After"))
        limited = status == 429 or (status == 403 and after is not None)
        if status not in RETRY_STATUS and not limited:
            return None
        why = f"HTTP {status}{detail(resp) if detail is not None else ''}"
        return Retry(why, after, ambiguous=not limited)

    def retrying(self, what: str, attempt: Callable[[], T]) -> Sent[T]:
        """Run ``attempt`` until it returns, retrying on `Retry` (the one retry loop)."""
        ambiguous = False
        for n in range(1, self.max_attempts + 1):
            began = time.monotonic()
            try:
                return Sent(attempt(), ambiguous, n)
            except Retry as retry:
                ambiguous = ambiguous or retry.ambiguous
                if n == self.max_attempts:
                    self.trouble(began, time.monotonic())
                    raise StoreFlaky(
                        f"{self.label}: {what} failed after {n} attempts: {retry.why}"
                    ) from None
                try:
                    delay = self._delay(n, what, retry)
                except RateLimited:
                    self.trouble(began, time.monotonic())
                    raise
                self.count(RETRIES)
                self.sleep(delay)
                self.trouble(began, time.monotonic())
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, what: str, retry: Retry) -> float:
        """The pause after failed attempt number ``attempt``; `RateLimited` if too long."""
        if retry.retry_after is not None:
            if retry.retry_after > self.retry_after_max:
                raise RateLimited(self.label, what, retry.why, retry.retry_after) from None
            return retry.retry_after
        delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (attempt - 1))
        return delay * self._rng.uniform(0.5, 1.0)
