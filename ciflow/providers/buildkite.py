"""Buildkite: ``parallelism:`` jobs (``BUILDKITE_PARALLEL_JOB``), build id, ``---`` log groups."""

from __future__ import annotations

from collections.abc import Mapping

from .base import JobInfo, Provider, env_int

__all__ = ["Buildkite"]


class Buildkite(Provider):
    """A Buildkite job."""

    name = "Buildkite"
    parallelism = "Buildkite parallelism:"

    def detected(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("BUILDKITE"))

    def job(self, env: Mapping[str, str]) -> JobInfo:
        return JobInfo(
            self.name,
            env_int(env, "BUILDKITE_PARALLEL_JOB"),
            env_int(env, "BUILDKITE_PARALLEL_JOB_COUNT"),
            env.get("BUILDKITE_BUILD_ID") or None,
        )

    def branch(self, env: Mapping[str, str]) -> str | None:
        return env.get("BUILDKITE_BRANCH") or None

    def group(self, title: str, lines: list[str]) -> list[str]:
        """A collapsed group: Buildkite folds the lines after ``--- title`` up to the next one."""
        return [f"--- {title}", *lines]
