"""CircleCI: ``parallelism:`` containers (``CIRCLE_NODE_INDEX``), workflow id."""

from __future__ import annotations

from collections.abc import Mapping

from .base import JobInfo, Provider, env_int

__all__ = ["CircleCI"]


class CircleCI(Provider):
    """A CircleCI job (each step's log is folded by CircleCI itself: no groups)."""

    name = "CircleCI"
    parallelism = "CircleCI parallelism:"

    def detected(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("CIRCLECI"))

    def job(self, env: Mapping[str, str]) -> JobInfo:
        return JobInfo(
            self.name,
            env_int(env, "CIRCLE_NODE_INDEX"),
            env_int(env, "CIRCLE_NODE_TOTAL"),
            env.get("CIRCLE_WORKFLOW_ID") or None,
        )

    def branch(self, env: Mapping[str, str]) -> str | None:
        return env.get("CIRCLE_BRANCH") or None
