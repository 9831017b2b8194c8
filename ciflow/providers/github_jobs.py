"""The CI platform's own record of a run's jobs: which of them have ended.

On GitHub Actions a worker whose job the jobs API reports ``completed`` is gone, whatever its
heartbeats said, so workers there need no heartbeat artifacts at all. It needs ``GITHUB_TOKEN``
in the environment with ``actions: read``, and each worker's job id (``CIFLOW_JOB_ID``, which
the reusable action sets from ``job.check_run_id``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..stores.base import StoreError

if TYPE_CHECKING:
    import requests

    from ..stores.transport import Transport

__all__ = ["GitHubJobs", "job_of"]

ATTEMPTS = 3
MAX_RETRY_AFTER = 60  # seconds; a longer rate-limit pause fails this look (the next one retries)
BACKOFF_CAP = 8.0
TIMEOUT = (10.0, 30.0)
LABEL = "GitHub jobs API"


def job_of(worker: str) -> str | None:
    """The CI job id a worker id carries (``...-j<id>``, see `registry.new_worker_id`), or None."""
    _, sep, tail = worker.rpartition("-j")
    return tail if sep and tail.isdigit() else None


def _message(resp: requests.Response) -> str:
    """The ``message`` of a GitHub API error body (or the start of the body)."""
    try:
        return str(resp.json().get("message", ""))
    except (ValueError, AttributeError):
        return resp.text[:200]


def _detail(resp: requests.Response) -> str:
    return f": {_message(resp)}"


def _fail_fast(resp: requests.Response) -> None:
    """The primary rate limit is spent: no retry within this look helps."""
    if resp.status_code != 200 and resp.headers.get("x-ratelimit-remaining") == "0":
        why = f"HTTP {resp.status_code}{_detail(resp)}"
        raise StoreError(f"{LABEL}: rate limit reached ({why})")


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
    """``GET /repos/{repo}/actions/runs/{run}/attempts/{n}/jobs``: the run's jobs and states."""

    def __init__(
        self,
        api_url: str,
        repository: str,
        run_id: str,
        attempt: str,
        token: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from ..stores.transport import Transport

        self.url = f"{api_url.rstrip('/')}/repos/{repository}/actions/runs/{run_id}"
        self.url += f"/attempts/{attempt}/jobs"
        self.calls = 0
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

    def _count(self, op: str) -> None:
        if op == "jobs":
            self.calls += 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> GitHubJobs | None:
        """The jobs API of the current run, or None outside GitHub Actions or without a token."""
        token = env.get("CIFLOW_GITHUB_TOKEN") or env.get("GITHUB_TOKEN")
        repository, run_id = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
        if env.get("GITHUB_ACTIONS") != "true" or not (token and repository and run_id):
            return None
        api = env.get("GITHUB_API_URL") or "https://api.github.com"
        return cls(api, repository, run_id, env.get("GITHUB_RUN_ATTEMPT") or "1", token)

    def statuses(self) -> dict[str, str]:
        """Job id -> ``queued``/``in_progress``/``completed``/...; `StoreError` if unreadable."""
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
                return found
            page += 1

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        """One page, retried by the shared transport (`ciflow.stores.transport`)."""
        from ..stores.transport import RateLimited

        try:
            sent = self.transport.send(
                "GET", self.url, _read, counter="jobs", what=f"GET {self.url}",
                timeout=TIMEOUT, detail=_detail, fail_fast=_fail_fast, params=params,
            )  # fmt: skip
        except RateLimited as exc:
            raise StoreError(f"{LABEL}: {exc.why}, retry after {exc.retry_after:.0f}s") from None
        return sent.value

    def close(self) -> None:
        self.transport.close()
