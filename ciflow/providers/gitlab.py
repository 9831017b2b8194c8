"""GitLab CI: `parallel: N` jobs (`CI_NODE_INDEX`, 1-based), pipeline id, collapsed sections."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from .base import JobInfo, Provider, env_int

__all__ = ["GitLab"]

_SECTION = re.compile(r"[^A-Za-z0-9_.-]")


class GitLab(Provider):
    """A GitLab CI job."""

    name = "GitLab"
    parallelism = "GitLab parallel:"

    def detected(self, env: Mapping[str, str]) -> bool:
        return bool(env.get("GITLAB_CI"))

    def job(self, env: Mapping[str, str]) -> JobInfo:
        index = env_int(env, "CI_NODE_INDEX")  # 1-based, set only with `parallel:`
        return JobInfo(
            self.name,
            None if index is None else index - 1,
            env_int(env, "CI_NODE_TOTAL"),
            env.get("CI_PIPELINE_ID") or None,
        )

    def branch(self, env: Mapping[str, str]) -> str | None:
        return env.get("CI_COMMIT_REF_NAME") or None

    def group(self, title: str, lines: list[str]) -> list[str]:
        """A collapsed section (GitLab's ``section_start``/``section_end`` markers)."""
        name = _SECTION.sub("_", title)[:60] or "module"
        now = int(time.time())
        return [
            f"\x1b[0Ksection_start:{now}:{name}[collapsed=true]\r\x1b[0K{title}",
            *lines,
            f"\x1b[0Ksection_end:{now}:{name}\r\x1b[0K",
        ]
