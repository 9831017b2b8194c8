"""The emulator's REST jobs API: GitHub's rate-limit headers and answers, the jobs listings.

As on GitHub, every answer carries ``x-ratelimit-limit``/``-remaining``/``-used``/``-reset``
(epoch seconds)/``-resource: core``; a repository that spent its hour gets 403 with
``x-ratelimit-remaining: 0`` (the primary limit), and a secondary limit is 429 with
``retry-after``. Listings: ``/runs/{run}/attempts/{n}/jobs`` lists the jobs of attempt n;
``/runs/{run}/jobs`` those of the latest execution of each job (``filter=latest``, the
default) or every execution (``filter=all``).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "HOUR", "PRIMARY_MESSAGE", "REST_LIMIT", "SECONDARY_MESSAGE", "list_jobs", "primary_limit",
    "rate_headers", "secondary_limit",
]  # fmt: skip

#: GITHUB_TOKEN's primary limit: requests an hour per repository
REST_LIMIT = 1000
HOUR = 3600.0
DOCS = "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api"
#: GitHub's message when an installation token (GITHUB_TOKEN) spent its primary limit
PRIMARY_MESSAGE = "API rate limit exceeded for installation ID 1."
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
)


def rate_headers(limit: int, used: int, reset: float) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of one answer."""
    return {
        "x-ratelimit-limit": str(limit),
        "x-ratelimit-remaining": str(max(0, limit - used)),
        "x-ratelimit-used": str(min(used, limit)),
        "x-ratelimit-reset": str(math.ceil(reset)),
        "x-ratelimit-resource": "core",
    }


def primary_limit() -> tuple[int, dict[str, Any]]:
    """The answer once the repository's hour is spent."""
    return 403, {"message": PRIMARY_MESSAGE, "documentation_url": DOCS}


def secondary_limit() -> tuple[int, dict[str, Any]]:
    """The answer of a secondary rate limit (sent with ``retry-after``)."""
    return 429, {"message": SECONDARY_MESSAGE, "documentation_url": DOCS}


def _select(
    records: list[dict[str, Any]], attempt: str | None, query: dict[str, list[str]]
) -> list[dict[str, Any]] | None:
    """The records one listing shows, or None for an unknown ``filter`` or attempt."""
    if attempt is not None:
        if not attempt.isdigit() or int(attempt) < 1:
            return None
        return [r for r in records if r.get("run_attempt", 1) == int(attempt)]
    which = query.get("filter", ["latest"])[0]
    if which == "all":
        return records
    if which != "latest":
        return None
    newest: dict[str, dict[str, Any]] = {}
    for record in records:  # the latest execution of each job
        old = newest.get(record["name"])
        if old is None or record.get("run_attempt", 1) > old.get("run_attempt", 1):
            newest[record["name"]] = record
    return list(newest.values())


def list_jobs(
    records: list[dict[str, Any]], attempt: str | None, query: dict[str, list[str]]
) -> tuple[int, dict[str, Any]]:
    """One page of a run's jobs: of attempt ``attempt``, or (None) by ``filter``."""
    jobs = _select(records, attempt, query)
    if jobs is None:
        if attempt is None:
            return 422, {"message": "Validation Failed"}
        return 404, {"message": "Not Found"}
    try:
        per_page = min(100, max(1, int(query.get("per_page", ["30"])[0])))
        page = max(1, int(query.get("page", ["1"])[0]))
    except ValueError:
        return 422, {"message": "Validation Failed"}
    chunk = jobs[(page - 1) * per_page : page * per_page]
    return 200, {"total_count": len(jobs), "jobs": chunk}
