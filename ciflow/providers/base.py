"""What a CI provider is: how ciflow learns its slot and run from a CI system, and what it offers.

One file per CI system in this package subclasses `Provider`; `registry.py` lists them in the order
they are tried. See docs/architecture.md, "Adding a CI provider".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..errors import UsageError

if TYPE_CHECKING:
    from .github_jobs import GitHubJobs

__all__ = ["JobInfo", "Provider", "env_int"]


@dataclass(frozen=True)
class JobInfo:
    """The slot and run this job belongs to, and which CI system said so."""

    system: str
    slot: int | None
    total: int | None
    run_id: str | None
    #: which attempt of the CI run this job is (GitHub's "Re-run failed jobs" makes attempt 2)
    attempt: int | None = None


def env_int(env: Mapping[str, str], name: str) -> int | None:
    """A whole-number variable, None when unset or empty; `UsageError` when it is not a number."""
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{name}={value!r} is not a whole number") from None


class Provider:
    """A CI system as ciflow sees it. The base class is "no CI system": every answer is empty.

    Subclasses override what their CI offers; everything else keeps these defaults.
    """

    #: the name shown in messages and `JobInfo.system`
    name: ClassVar[str] = "none"
    #: how this CI numbers parallel jobs, for the "no slot" error (empty: it does not)
    parallelism: ClassVar[str] = ""

    def detected(self, env: Mapping[str, str]) -> bool:
        """Whether this job runs on this CI system."""
        return False

    def job(self, env: Mapping[str, str]) -> JobInfo:
        """The slot (0-based), slot count and run id this CI system gives, where it gives them."""
        return JobInfo(self.name, None, None, None)

    def branch(self, env: Mapping[str, str]) -> str | None:
        """The branch being built, when the CI system says (Jenkins' ``BRANCH_NAME`` by default)."""
        return env.get("BRANCH_NAME") or None

    def default_store(self, env: Mapping[str, str]) -> str | None:
        """The store URL workers use when none is given, or None (then one must be given)."""
        return None

    def default_cache(self, env: Mapping[str, str]) -> str | None:
        """The result cache's store URL when none is given; None: a folder beside the pipeline."""
        return None

    def jobs_api(self, env: Mapping[str, str]) -> GitHubJobs | None:
        """A client of the CI's own record of which jobs ended (a liveness source), or None."""
        return None

    def job_id(self, env: Mapping[str, str]) -> str | None:
        """This job's id in that record (so observers need no heartbeats from it), or None."""
        return None

    def publish_outputs(self, env: Mapping[str, str], outputs: Mapping[str, str]) -> None:
        """Hand the plan job's outputs (the worker matrix) to later jobs, where the CI can."""

    def step_summary(self, env: Mapping[str, str]) -> Path | None:
        """A file whose Markdown the CI shows on the run's page, or None."""
        return None

    def group(self, title: str, lines: list[str]) -> list[str] | None:
        """``lines`` wrapped as one collapsible log group, or None when the CI has none.

        With groups, the console holds a module's output back and prints it in one piece when the
        module ends, so parallel modules do not interleave.
        """
        return None

    def annotation(self, title: str, message: str, place: tuple[str, int] | None) -> str | None:
        """A log line the CI turns into an error annotation (on ``place``: file, line), or None.

        ``title`` and ``message`` arrive masked; the provider escapes them for its log syntax.
        """
        return None
