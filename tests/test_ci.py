from __future__ import annotations

import pytest

from ciflow.errors import UsageError
from ciflow.providers.detect import JobInfo, detect_job


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
            JobInfo("GitHub Actions", None, None, "123-2"),
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
