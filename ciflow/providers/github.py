"""GitHub Actions: run id and attempt, the run's artifacts as default store, the jobs API as a
liveness source, the plan's matrix as a step output, ``::group::`` logs, ``::error`` annotations
and the step summary.

GitHub has no parallel-index variable: the workflow's matrix passes ``--slot`` (ciflow's action
does).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import UsageError
from .base import JobInfo, Provider, env_int
from .github_jobs import GitHubJobs

__all__ = ["GitHubActions", "escape_data", "escape_property"]


def escape_data(text: str) -> str:
    """Escape a workflow-command message (GitHub's rules: %, CR, LF)."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow-command property value (also ':' and ',')."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GitHubActions(Provider):
    """A GitHub Actions job."""

    name = "GitHub Actions"

    def detected(self, env: Mapping[str, str]) -> bool:
        return env.get("GITHUB_ACTIONS") == "true"

    def job(self, env: Mapping[str, str]) -> JobInfo:
        """Run id ``<run>-<attempt>``: a plan made in attempt N names the run of attempt N.

        Workers and the summary of a later attempt ("Re-run failed jobs") take the plan job's
        ``run-id`` output, or find the newest earlier plan (`ciflow.distributed.resume`).
        """
        run = env.get("GITHUB_RUN_ID")
        attempt = env_int(env, "GITHUB_RUN_ATTEMPT") or 1
        return JobInfo(self.name, None, None, f"{run}-{attempt}" if run else None, attempt)

    def branch(self, env: Mapping[str, str]) -> str | None:
        return env.get("GITHUB_HEAD_REF") or env.get("GITHUB_REF_NAME") or None

    def default_store(self, env: Mapping[str, str]) -> str | None:
        """The run's own artifacts, when the runtime token is there (ciflow's action exports it)."""
        return "github://" if env.get("ACTIONS_RUNTIME_TOKEN") else None

    def default_cache(self, env: Mapping[str, str]) -> str | None:
        """The repository's Actions cache (scoped by branch, then the default branch)."""
        return "github-cache://" if env.get("ACTIONS_RUNTIME_TOKEN") else None

    def jobs_api(self, env: Mapping[str, str]) -> GitHubJobs | None:
        return GitHubJobs.from_env(env)

    def job_id(self, env: Mapping[str, str]) -> str | None:
        """``CIFLOW_JOB_ID``, which the reusable action sets from ``job.check_run_id``."""
        return env.get("CIFLOW_JOB_ID") or None

    def publish_outputs(self, env: Mapping[str, str], outputs: Mapping[str, str]) -> None:
        """Append ``name=value`` lines to ``$GITHUB_OUTPUT`` (values are one-line JSON)."""
        path = env.get("GITHUB_OUTPUT")
        if not path:
            return
        text = "".join(f"{k}={v}\n" for k, v in outputs.items())
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write GITHUB_OUTPUT {path}: {exc.strerror or exc}") from None

    def step_summary(self, env: Mapping[str, str]) -> Path | None:
        path = env.get("GITHUB_STEP_SUMMARY")
        return Path(path) if path else None

    def group(self, title: str, lines: list[str]) -> list[str]:
        return [f"::group::{title}", *lines, "::endgroup::"]

    def annotation(self, title: str, message: str, place: tuple[str, int] | None) -> str:
        """``::error file=F,line=L,title=T::message``, escaped after masking (never before)."""
        where = f"file={escape_property(place[0])},line={place[1]}," if place else ""
        return f"::error {where}title={escape_property(title)}::{escape_data(message)}"
