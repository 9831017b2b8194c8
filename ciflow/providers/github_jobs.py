"""The CI platform's own record of a run's jobs: which of them have ended.

On GitHub Actions a worker whose job the jobs API reports ``completed`` is gone, whatever its
heartbeats said, so workers there need no heartbeat artifacts at all. It needs ``GITHUB_TOKEN``
in the environment with ``actions: read``, and each worker's job id (``CIFLOW_JOB_ID``, which
the reusable action sets from ``job.check_run_id``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..stores.base import StoreError

__all__ = ["GitHubJobs", "job_of"]

ATTEMPTS = 3
MAX_RETRY_AFTER = 60  # seconds; a longer rate-limit pause fails this look (the next one retries)
TIMEOUT = (10.0, 30.0)


def job_of(worker: str) -> str | None:
    """The CI job id a worker id carries (``...-j<id>``, see `registry.new_worker_id`), or None."""
    _, sep, tail = worker.rpartition("-j")
    return tail if sep and tail.isdigit() else None


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
        import requests

        self.url = f"{api_url.rstrip('/')}/repos/{repository}/actions/runs/{run_id}"
        self.url += f"/attempts/{attempt}/jobs"
        self.session = requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Bearer {token}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": "2022-11-28",
            }
        )
        self.sleep = sleep
        self.calls = 0

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
                raise StoreError(f"GitHub jobs API: unexpected answer from {self.url}")
            for job in jobs:
                if isinstance(job, dict) and job.get("id") is not None:
                    found[str(job["id"])] = str(job.get("status") or "")
            total = body.get("total_count")
            if not jobs or not isinstance(total, int) or page * 100 >= total:
                return found
            page += 1

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        import requests

        for attempt in range(ATTEMPTS):
            self.calls += 1
            try:
                resp = self.session.get(self.url, params=params, timeout=TIMEOUT)
            except requests.RequestException as exc:
                why = f"cannot reach {self.url}: {type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        data = None
                    if isinstance(data, dict):
                        return data
                    why = "the answer is not a JSON object"
                else:
                    try:
                        message = str(resp.json().get("message", ""))
                    except (ValueError, AttributeError):
                        message = resp.text[:200]
                    why = f"HTTP {resp.status_code}: {message}"
                    if resp.headers.get("x-ratelimit-remaining") == "0":
                        raise StoreError(f"GitHub jobs API: rate limit reached ({why})")
                    limited = resp.status_code == 429 or (
                        resp.status_code == 403 and resp.headers.get("Retry-After")
                    )
                    if resp.status_code < 500 and not limited:
                        hint = (
                            "GITHUB_TOKEN is not accepted"
                            if resp.status_code == 401
                            else "give the workflow's token `actions: read` to watch jobs"
                        )
                        raise StoreError(
                            f"GitHub jobs API: {why}; {hint} (ciflow uses heartbeats otherwise)"
                        )
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.isdigit() and int(retry_after) > MAX_RETRY_AFTER:
                    raise StoreError(f"GitHub jobs API: {why}, retry after {retry_after}s")
                if retry_after.isdigit() and attempt + 1 < ATTEMPTS:
                    self.sleep(float(retry_after))
                    continue
            if attempt + 1 < ATTEMPTS:
                self.sleep(min(8.0, 2.0**attempt) * random.uniform(0.5, 1.0))
        raise StoreError(f"GitHub jobs API: {why} (after {ATTEMPTS} attempts)")

    def close(self) -> None:
        self.session.close()
