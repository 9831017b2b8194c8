from __future__ import annotations

import io
from pathlib import Path

import pytest

from ciflow.errors import UsageError
from ciflow.providers.base import JobInfo
from ciflow.providers.registry import detect_job


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {
                "GITLAB_CI": "true",
                "CI_NODE_INDEX": "3",
                "CI_NODE_TOTAL": "4",
                "CI_PIPELINE_ID": "77",
            },
            JobInfo("GitLab", 2, 4, "77"),
        ),
        ({"GITLAB_CI": "true", "CI_PIPELINE_ID": "77"}, JobInfo("GitLab", None, None, "77")),
        ({"JOB_COMPLETION_INDEX": "0"}, JobInfo("Kubernetes", 0, None, None)),
        (
            {
                "CIRCLECI": "true",
                "CIRCLE_NODE_INDEX": "1",
                "CIRCLE_NODE_TOTAL": "3",
                "CIRCLE_WORKFLOW_ID": "wf",
            },
            JobInfo("CircleCI", 1, 3, "wf"),
        ),
        (
            {
                "BUILDKITE": "true",
                "BUILDKITE_PARALLEL_JOB": "5",
                "BUILDKITE_PARALLEL_JOB_COUNT": "8",
                "BUILDKITE_BUILD_ID": "b1",
            },
            JobInfo("Buildkite", 5, 8, "b1"),
        ),
        (
            {"GITHUB_ACTIONS": "true", "GITHUB_RUN_ID": "123", "GITHUB_RUN_ATTEMPT": "2"},
            JobInfo("GitHub Actions", None, None, "123-2", 2),
        ),
        ({}, JobInfo("none", None, None, None)),
        (
            {
                "GITLAB_CI": "true",
                "CI_NODE_INDEX": "2",
                "CIFLOW_SLOT": "0",
                "CIFLOW_RUN_ID": "mine",
            },
            JobInfo("GitLab", 0, None, "mine"),
        ),  # CIFLOW_* win; GitLab gave no total
    ],
)
def test_detect_job(env: dict[str, str], expected: JobInfo) -> None:
    assert detect_job(env) == expected


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(UsageError, match="CI_NODE_INDEX='x' is not a whole number"):
        detect_job({"GITLAB_CI": "true", "CI_NODE_INDEX": "x"})
    with pytest.raises(UsageError, match="GitLab gave slot -1"):
        detect_job({"GITLAB_CI": "true", "CI_NODE_INDEX": "0"})


def test_the_first_provider_that_detects_its_ci_wins_and_local_is_the_fallback() -> None:
    from ciflow.providers.registry import PROVIDERS, current

    assert current({}).name == "none"
    assert current({"GITHUB_ACTIONS": "true"}).name == "GitHub Actions"
    # a GitLab job on a Kubernetes executor sees JOB_COMPLETION_INDEX too: GitLab wins
    assert current({"GITLAB_CI": "true", "JOB_COMPLETION_INDEX": "0"}).name == "GitLab"
    names = [p.name for p in PROVIDERS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("env", "branch"),
    [
        ({"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main", "GITHUB_HEAD_REF": "pr"}, "pr"),
        ({"GITHUB_ACTIONS": "true", "GITHUB_REF_NAME": "main"}, "main"),
        ({"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "dev"}, "dev"),
        ({"CIRCLECI": "true", "CIRCLE_BRANCH": "c"}, "c"),
        ({"BUILDKITE": "true", "BUILDKITE_BRANCH": "b"}, "b"),
        ({"BRANCH_NAME": "jenkins"}, "jenkins"),  # no CI detected: Jenkins' variable
    ],
)
def test_each_provider_names_its_branch(env: dict[str, str], branch: str | None) -> None:
    from ciflow.providers.registry import current

    assert current(env).branch(env) == branch


def test_the_branch_comes_from_any_ci_variable_the_detected_provider_first() -> None:
    from ciflow.providers.registry import branch

    assert branch({"CI_COMMIT_REF_NAME": "dev"}) == "dev"
    env = {"GITLAB_CI": "true", "CI_COMMIT_REF_NAME": "dev", "GITHUB_REF_NAME": "main"}
    assert branch(env) == "dev"
    assert branch({}) is None


def test_only_github_has_a_default_store_a_step_summary_and_a_jobs_api(tmp_path: Path) -> None:
    from ciflow.providers.registry import PROVIDERS, current

    env = {
        "GITHUB_ACTIONS": "true",
        "ACTIONS_RUNTIME_TOKEN": "t",
        "GITHUB_STEP_SUMMARY": str(tmp_path / "s.md"),
        "GITHUB_TOKEN": "g",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "1",
        "CIFLOW_JOB_ID": "42",
    }
    github = current(env)
    assert github.default_store(env) == "github://"
    assert github.step_summary(env) == tmp_path / "s.md"
    assert github.job_id(env) == "42"
    jobs = github.jobs_api(env)
    assert jobs is not None and jobs.url.endswith("/repos/o/r/actions/runs/1/attempts/1/jobs")
    jobs.close()
    assert github.default_store({"GITHUB_ACTIONS": "true"}) is None  # no runtime token
    for other in PROVIDERS:
        if other is not github:
            assert other.default_store(env) is None and other.step_summary(env) is None
            assert other.jobs_api(env) is None and other.annotation("t", "m", None) is None


def test_github_publishes_the_plan_outputs_and_says_when_it_cannot(tmp_path: Path) -> None:
    from ciflow.providers.github import GitHubActions

    out = tmp_path / "out"
    out.write_text("earlier=1\n")
    GitHubActions().publish_outputs({"GITHUB_OUTPUT": str(out)}, {"matrix": "[0,1]", "n": "2"})
    assert out.read_text() == "earlier=1\nmatrix=[0,1]\nn=2\n"
    with pytest.raises(UsageError, match="cannot write GITHUB_OUTPUT"):
        GitHubActions().publish_outputs({"GITHUB_OUTPUT": str(tmp_path)}, {"a": "b"})


def test_log_groups_in_each_ci_syntax() -> None:
    from ciflow.providers.buildkite import Buildkite
    from ciflow.providers.circleci import CircleCI
    from ciflow.providers.github import GitHubActions
    from ciflow.providers.gitlab import GitLab

    assert GitHubActions().group("build", ["a"]) == ["::group::build", "a", "::endgroup::"]
    assert Buildkite().group("build", ["a"]) == ["--- build", "a"]
    start, body, end = GitLab().group("build (continued)", ["a"])
    assert "section_start:" in start and "build__continued_[collapsed=true]" in start
    assert body == "a" and "section_end:" in end and end.split(":")[2].startswith("build__")
    assert CircleCI().group("build", ["a"]) is None


def test_a_github_annotation_is_escaped_after_masking_so_a_secret_never_survives() -> None:
    from ciflow.execution.masking import Masker
    from ciflow.model.outcome import ModuleRecord, Outcome
    from ciflow.providers.github import GitHubActions
    from ciflow.ui.console import Console

    masker = Masker()
    masker.add("pa%40ss")
    out = io.StringIO()
    console = Console(out, live=False, color=False, masker=masker, provider=GitHubActions())
    console.module_finished(
        ModuleRecord("m", Outcome.FAILED, 1, 1.0, 2.0, 1.0, error="login pa%40ss failed")
    )
    text = out.getvalue()
    assert "::error title=m failed::login *** failed" in text
    assert "pa%2540ss" not in text and "pa%40ss" not in text
