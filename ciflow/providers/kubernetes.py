"""Kubernetes Indexed Jobs: the pod's ``JOB_COMPLETION_INDEX`` is its slot."""

from __future__ import annotations

from collections.abc import Mapping

from .base import JobInfo, Provider, env_int

__all__ = ["Kubernetes"]


class Kubernetes(Provider):
    """A pod of an Indexed Job (no run id: pass ``CIFLOW_RUN_ID``, e.g. from the Job's name)."""

    name = "Kubernetes"
    parallelism = "Kubernetes Indexed Jobs"

    def detected(self, env: Mapping[str, str]) -> bool:
        return env.get("JOB_COMPLETION_INDEX") is not None

    def job(self, env: Mapping[str, str]) -> JobInfo:
        return JobInfo(self.name, env_int(env, "JOB_COMPLETION_INDEX"), None, None)
