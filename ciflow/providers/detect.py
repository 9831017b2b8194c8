"""What the CI system tells a job: its slot (parallel index), the slot count and the run id.

So that ``ciflow worker`` needs no ``--slot`` where the CI system numbers parallel jobs itself.
GitHub Actions has no such variable: the matrix passes ``--slot`` (ciflow's action does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["JobInfo", "detect_job"]


@dataclass(frozen=True)
class JobInfo:
    """The slot and run this job belongs to, and which CI system said so."""

    system: str
    slot: int | None
    total: int | None
    run_id: str | None


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a whole number") from None


def detect_job(environ: Mapping[str, str] | None = None) -> JobInfo:
    """Read the slot and run id from GitLab, Kubernetes, CircleCI, Buildkite or GitHub variables.

    ``CIFLOW_SLOT`` and ``CIFLOW_RUN_ID`` override whatever the CI system says.
    """
    env = os.environ if environ is None else environ
    info = _detect(env)
    slot = _int(env, "CIFLOW_SLOT")
    run_id = env.get("CIFLOW_RUN_ID") or None
    if slot is not None or run_id is not None:
        info = JobInfo(
            info.system, slot if slot is not None else info.slot, info.total, run_id or info.run_id
        )
    if info.slot is not None and info.slot < 0:
        raise UsageError(f"{info.system} gave slot {info.slot}; slots start at 0")
    return info


def _detect(env: Mapping[str, str]) -> JobInfo:
    if env.get("GITLAB_CI"):
        index = _int(env, "CI_NODE_INDEX")  # 1-based, set only with `parallel:`
        return JobInfo(
            "GitLab",
            None if index is None else index - 1,
            _int(env, "CI_NODE_TOTAL"),
            env.get("CI_PIPELINE_ID") or None,
        )
    if env.get("BUILDKITE"):
        return JobInfo(
            "Buildkite",
            _int(env, "BUILDKITE_PARALLEL_JOB"),
            _int(env, "BUILDKITE_PARALLEL_JOB_COUNT"),
            env.get("BUILDKITE_BUILD_ID") or None,
        )
    if env.get("CIRCLECI"):
        return JobInfo(
            "CircleCI",
            _int(env, "CIRCLE_NODE_INDEX"),
            _int(env, "CIRCLE_NODE_TOTAL"),
            env.get("CIRCLE_WORKFLOW_ID") or None,
        )
    if env.get("JOB_COMPLETION_INDEX") is not None:  # a Kubernetes Indexed Job
        return JobInfo("Kubernetes", _int(env, "JOB_COMPLETION_INDEX"), None, None)
    if env.get("GITHUB_ACTIONS") == "true":
        run = env.get("GITHUB_RUN_ID")
        attempt = env.get("GITHUB_RUN_ATTEMPT", "1")
        return JobInfo("GitHub Actions", None, None, f"{run}-{attempt}" if run else None)
    return JobInfo("none", None, None, None)
