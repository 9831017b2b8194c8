"""The CI providers ciflow knows, in the order they are tried, and the one this job runs on.

A new CI system is one file in this package (a `Provider` subclass) plus one line in `PROVIDERS`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import UsageError
from .base import JobInfo, Provider, env_int
from .buildkite import Buildkite
from .circleci import CircleCI
from .github import GitHubActions
from .gitlab import GitLab
from .kubernetes import Kubernetes
from .local import Local

__all__ = ["PROVIDERS", "branch", "current", "detect_job"]

#: tried in order; the first whose `detected` is true wins (GitLab before Kubernetes: a GitLab
#: job on a Kubernetes executor may see JOB_COMPLETION_INDEX too)
PROVIDERS: tuple[Provider, ...] = (GitLab(), Buildkite(), CircleCI(), Kubernetes(), GitHubActions())
_LOCAL = Local()


def current(environ: Mapping[str, str] | None = None) -> Provider:
    """The provider of the CI system this process runs on (`Local` when none is detected)."""
    env = os.environ if environ is None else environ
    return next((p for p in PROVIDERS if p.detected(env)), _LOCAL)


def detect_job(environ: Mapping[str, str] | None = None) -> JobInfo:
    """The slot, slot count, run id and run attempt the CI system gives this job.

    ``CIFLOW_SLOT``, ``CIFLOW_RUN_ID`` and ``CIFLOW_RUN_ATTEMPT`` override whatever the CI
    system says.
    """
    env = os.environ if environ is None else environ
    info = current(env).job(env)
    slot = env_int(env, "CIFLOW_SLOT")
    run_id = env.get("CIFLOW_RUN_ID") or None
    attempt = env_int(env, "CIFLOW_RUN_ATTEMPT")
    if slot is not None or run_id is not None or attempt is not None:
        info = JobInfo(
            info.system, slot if slot is not None else info.slot, info.total,
            run_id or info.run_id, attempt if attempt is not None else info.attempt,
        )  # fmt: skip
    if info.slot is not None and info.slot < 0:
        raise UsageError(f"{info.system} gave slot {info.slot}; slots start at 0")
    if info.attempt is not None and info.attempt < 1:
        raise UsageError(f"{info.system} gave run attempt {info.attempt}; attempts start at 1")
    return info


def slot_sources() -> str:
    """The CI systems that number parallel jobs, for the "no slot" error."""
    return ", ".join(p.parallelism for p in PROVIDERS if p.parallelism)


def branch(environ: Mapping[str, str]) -> str | None:
    """The branch the CI variables name: the detected provider's first, then any provider's.

    (A job may run under one CI but carry another's variables, e.g. a GitLab mirror on Jenkins.)
    """
    first = current(environ)
    for provider in (first, *PROVIDERS, _LOCAL):
        named = provider.branch(environ)
        if named:
            return named
    return None
