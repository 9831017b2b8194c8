"""The CI platform's own record of a run's jobs: which of them have ended.

On GitHub Actions a worker whose job the jobs API reports ``completed`` is gone, whatever its
heartbeats said, so workers there need no heartbeat artifacts at all. It needs ``GITHUB_TOKEN``
in the environment with ``actions: read``, and each worker's job id (``CIFLOW_JOB_ID``, which
the reusable action sets from ``job.check_run_id``).

``GITHUB_TOKEN`` has 1,000 REST requests an hour per repository, shared with every workflow of
the repository. So the run has a **budget**: ``CIFLOW_JOBS_API_BUDGET`` calls an hour, all its
workers together (default `DEFAULT_BUDGET`, 0: no jobs API). Workers share nothing but the
store, so each takes an equal part: the budget over the jobs of the run attempt (an upper bound
on its workers), and never sends more than that part in any hour (`GitHubJobs.next_look`
spaces the looks evenly). The client reads GitHub's ``x-ratelimit-*`` headers on every answer
(`GitHubJobs.rate`); `GitHubJobs.exhausted` says when to stop using the API, and a rate-limit
answer (403/429) raises `JobsApiLimited`: liveness then falls back to heartbeats.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..stores.base import StoreError

if TYPE_CHECKING:
    import requests

    from ..stores.transport import Transport

__all__ = [
    "BUDGET_ENV", "DEFAULT_BUDGET", "GitHubJobs", "JobsApiLimited", "RateLimit", "job_of",
]  # fmt: skip

ATTEMPTS = 3
MAX_RETRY_AFTER = 60  # seconds; a longer pause asked for by a 5xx fails this look
BACKOFF_CAP = 8.0
TIMEOUT = (10.0, 30.0)
LABEL = "GitHub jobs API"
#: the run's jobs-API calls an hour, all workers together (0: heartbeats only)
BUDGET_ENV = "CIFLOW_JOBS_API_BUDGET"
DEFAULT_BUDGET = 200
HOUR = 3600.0
#: below this many requests left in the repository's hour (at least `RESERVE_MIN`, else this
#: share of the limit) ciflow leaves the rest to the repository's other workflows
RESERVE_SHARE = 0.1
RESERVE_MIN = 50


def job_of(worker: str) -> str | None:
    """The CI job id a worker id carries (``...-j<id>``, see `registry.new_worker_id`), or None."""
    _, sep, tail = worker.rpartition("-j")
    return tail if sep and tail.isdigit() else None


def budget_of(env: Mapping[str, str]) -> int:
    """``CIFLOW_JOBS_API_BUDGET``, or `DEFAULT_BUDGET`; `UsageError` when it is not a count."""
    value = env.get(BUDGET_ENV, "").strip()
    if not value:
        return DEFAULT_BUDGET
    if not value.isdigit():
        raise UsageError(
            f"{BUDGET_ENV}={value!r} is not a whole number of jobs-API calls an hour "
            f"(default {DEFAULT_BUDGET}; 0 watches workers by heartbeats only)"
        )
    return int(value)


@dataclass(frozen=True)
class RateLimit:
    """What GitHub's ``x-ratelimit-*`` headers said on the latest answer."""

    limit: int
    remaining: int
    used: int
    reset: float  # epoch seconds when the hour's count starts again
    resource: str

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> RateLimit | None:
        """The headers' figures, or None when an answer carries none (or garbled ones)."""
        try:
            limit = int(headers["x-ratelimit-limit"])
            remaining = int(headers["x-ratelimit-remaining"])
            used = int(headers.get("x-ratelimit-used") or max(0, limit - remaining))
            reset = float(headers.get("x-ratelimit-reset") or 0)
        except (KeyError, ValueError):
            return None
        return cls(limit, remaining, used, reset, headers.get("x-ratelimit-resource") or "core")

    @property
    def reserve(self) -> int:
        """Requests left to the repository's other workflows: ciflow stops below this."""
        return max(RESERVE_MIN, math.ceil(self.limit * RESERVE_SHARE))

    def describe(self) -> str:
        """``37 of 1000 requests left until 14:05 UTC``."""
        until = datetime.fromtimestamp(self.reset, UTC).strftime("%H:%M UTC")
        return f"{self.remaining} of {self.limit} requests left until {until}"


class JobsApiLimited(StoreError):
    """A rate limit (403/429) or the run's budget: this run must not ask the jobs API again."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{LABEL}: {why}")
        self.why = why


class BudgetSpent(StoreError):
    """This hour's part of the run's budget is spent (retries took it): the look waits."""


def _message(resp: requests.Response) -> str:
    """The ``message`` of a GitHub API error body (or the start of the body)."""
    try:
        return str(resp.json().get("message", ""))
    except (ValueError, AttributeError):
        return resp.text[:200]


def _detail(resp: requests.Response) -> str:
    return f": {_message(resp)}"


def _limited(resp: requests.Response, rate: RateLimit | None) -> str | None:
    """Why an answer is a rate limit (primary or secondary), or None when it is not one."""
    from ..stores.transport import retry_after_seconds

    status = resp.status_code
    if status not in (403, 429):
        return None
    after = retry_after_seconds(resp.headers.get("retry-after"))
    message = _message(resp)
    spent = rate is not None and rate.remaining == 0
    if status == 403 and after is None and not spent and "rate limit" not in message.lower():
        return None  # a permission refused
    why = f"HTTP {status}: {message}"
    if after is not None:
        return f"{why}, retry after {after:.0f}s"
    return f"{why}; {rate.describe()}" if rate is not None else why


def _read(resp: requests.Response) -> dict[str, Any]:
    """A page of jobs; a clear `StoreError` for answers no retry mends."""
    if resp.status_code != 200:
        hint = (
            "GITHUB_TOKEN is not accepted"
            if resp.status_code == 401
            else "give the workflow's token `actions: read` to watch jobs"
        )
        why = f"HTTP {resp.status_code}{_detail(resp)}"
        raise StoreError(f"{LABEL}: {why}; {hint} (ciflow uses heartbeats otherwise)")
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        from ..stores.transport import Retry

        raise Retry("the answer is not a JSON object")
    return data


class GitHubJobs:
    """``GET /repos/{repo}/actions/runs/{run}/attempts/{n}/jobs``: the run's jobs and states.

    ``budget``: the run's calls an hour, all workers together; ``clock`` (monotonic seconds)
    and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        api_url: str,
        repository: str,
        run_id: str,
        attempt: str,
        token: str,
        *,
        budget: int = DEFAULT_BUDGET,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from ..stores.transport import Transport

        self.url = f"{api_url.rstrip('/')}/repos/{repository}/actions/runs/{run_id}"
        self.url += f"/attempts/{attempt}/jobs"
        self.budget = budget
        self.clock = clock
        self.calls = 0
        #: jobs of the run attempt seen at most: the share's divisor (callers may raise it)
        self.workers = 1
        #: the rate-limit headers of the latest answer, None before one carried them
        self.rate: RateLimit | None = None
        #: job id -> status, from the latest complete listing
        self.states: dict[str, str] = {}
        self.pages = 1  # of the latest listing
        self._sent: deque[float] = deque()  # when this client's requests of the last hour went
        self._look = -math.inf  # when the latest listing began
        self._closing: list[Callable[[], None]] = []
        self.transport: Transport = Transport(
            LABEL, sleep=sleep, max_attempts=ATTEMPTS, backoff_cap=BACKOFF_CAP,
            retry_after_max=MAX_RETRY_AFTER, count=self._count,
        )  # fmt: skip
        self.transport.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            }
        )

    @property
    def sleep(self) -> Callable[[float], None]:
        """How the client pauses between attempts (tests replace it)."""
        return self.transport.sleep

    @sleep.setter
    def sleep(self, sleep: Callable[[float], None]) -> None:
        self.transport.sleep = sleep

    @property
    def remaining(self) -> int | None:
        """Requests the repository has left this hour, by the latest answer's headers."""
        return None if self.rate is None else self.rate.remaining

    @property
    def reset(self) -> float | None:
        """When the repository's hour starts again (epoch seconds), by the latest answer."""
        return None if self.rate is None else self.rate.reset

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitHubJobs | None:
        """The jobs API of the current run, or None outside GitHub Actions, without a token,
        or with ``CIFLOW_JOBS_API_BUDGET=0``."""
        token = env.get("CIFLOW_GITHUB_TOKEN") or env.get("GITHUB_TOKEN")
        repository, run_id = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
        if env.get("GITHUB_ACTIONS") != "true" or not (token and repository and run_id):
            return None
        budget = budget_of(env)
        if budget == 0:
            return None
        api = env.get("GITHUB_API_URL") or "https://api.github.com"
        attempt = env.get("GITHUB_RUN_ATTEMPT") or "1"
        return cls(api, repository, run_id, attempt, token, budget=budget)

    # -- the budget ---------------------------------------------------------------------------
    def share(self) -> int:
        """This worker's calls an hour: the run's budget over the jobs of the run attempt."""
        return self.budget // max(1, self.workers)

    def spent(self) -> int:
        """Requests this client sent in the last hour (retries included)."""
        now = self.clock()
        while self._sent and now - self._sent[0] >= HOUR:
            self._sent.popleft()
        return len(self._sent)

    def interval(self) -> float:
        """Seconds between looks that spread the share evenly over the hour (inf: none fits)."""
        looks = self.share() // max(1, self.pages)
        return HOUR / looks if looks else math.inf

    def next_look(self) -> float:
        """When (`clock`) the next listing may begin: one interval after the latest, and once
        the last hour's requests leave room for all its pages."""
        due = self._look + self.interval()
        over = self.spent() + self.pages - self.share()
        if 0 < over <= len(self._sent):
            due = max(due, self._sent[over - 1] + HOUR)
        return due

    def exhausted(self) -> str | None:
        """Why this run must stop using the jobs API now, or None: not one listing an hour fits
        in this worker's share, or the repository's requests left are below the reserve."""
        if self.interval() == math.inf:
            return (
                f"{BUDGET_ENV}={self.budget} calls an hour over {self.workers} jobs of the run "
                f"leave this worker less than one listing of {self.pages} page(s) an hour"
            )
        rate = self.rate
        if rate is not None and rate.remaining < rate.reserve:
            return rate.describe()
        return None

    # -- the calls ----------------------------------------------------------------------------
    def _count(self, op: str) -> None:
        """Before each request: count it, refusing one the hour's share has no room for."""
        if op != "jobs":
            return
        if self.spent() >= self.share():
            raise BudgetSpent(
                f"{LABEL}: this worker's {self.share()} calls of the last hour are spent "
                f"({BUDGET_ENV}={self.budget} over {self.workers} jobs); it asks again later"
            )
        self.calls += 1
        self._sent.append(self.clock())

    def _check(self, resp: requests.Response) -> None:
        """Every answer: note its rate-limit headers; a rate limit ends the jobs API's use."""
        self.rate = RateLimit.of(resp.headers) or self.rate
        why = _limited(resp, self.rate)
        if why is not None:
            raise JobsApiLimited(why)

    def statuses(self) -> dict[str, str]:
        """Job id -> ``queued``/``in_progress``/``completed``/...; `StoreError` if unreadable,
        `JobsApiLimited` on a rate limit, `BudgetSpent` when the hour's share is."""
        self._look = self.clock()
        found: dict[str, str] = {}
        page = 1
        while True:
            body = self._get({"per_page": "100", "page": str(page)})
            jobs = body.get("jobs")
            if not isinstance(jobs, list):
                raise StoreError(f"{LABEL}: unexpected answer from {self.url}")
            for job in jobs:
                if isinstance(job, dict) and job.get("id") is not None:
                    found[str(job["id"])] = str(job.get("status") or "")
            total = body.get("total_count")
            if not jobs or not isinstance(total, int) or page * 100 >= total:
                self.pages, self.states = page, found
                self.workers = max(self.workers, len(found))
                return found
            page += 1

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        """One page, retried by the shared transport (`ciflow.stores.transport`)."""
        sent = self.transport.send(
            "GET", self.url, _read, counter="jobs", what=f"GET {self.url}",
            timeout=TIMEOUT, detail=_detail, fail_fast=self._check, params=params,
        )  # fmt: skip
        return sent.value

    def on_close(self, action: Callable[[], None]) -> None:
        """Run ``action`` when the client closes (the fallback's heartbeats stop with it)."""
        self._closing.append(action)

    def close(self) -> None:
        for action in self._closing:
            action()
        self.transport.close()
