"""The GitHub jobs API client, against the emulator's REST route (real HTTP on loopback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import EVIDENCE, Liveness, new_worker_id
from ciflow.providers.github_jobs import GitHubJobs, job_of
from ciflow.stores import open_store
from ciflow.stores.base import StoreError
from ciflow.testing.emulator import Faults, GitHubEmulator


def client(env: dict[str, str]) -> GitHubJobs:
    jobs = GitHubJobs.from_env(env)
    assert jobs is not None
    jobs.sleep = lambda _s: None
    return jobs


def test_statuses_follow_jobs_starting_and_ending(emu: GitHubEmulator) -> None:
    a, b = emu.env("run-1", "a"), emu.env("run-1", "b")
    emu.env("run-2", "other")  # another run's job is not listed
    jobs = client(a)
    assert jobs.statuses() == {a["CIFLOW_JOB_ID"]: "in_progress", b["CIFLOW_JOB_ID"]: "in_progress"}
    emu.finish_job("run-1", "b")
    assert jobs.statuses()[b["CIFLOW_JOB_ID"]] == "completed"


def test_many_jobs_are_read_page_by_page(emu: GitHubEmulator) -> None:
    envs = [emu.env("run-big", f"job-{i}") for i in range(230)]
    jobs = client(envs[0])
    jobs.calls = 0
    states = jobs.statuses()
    assert set(states) == {e["CIFLOW_JOB_ID"] for e in envs}
    assert jobs.calls == 3  # 100 + 100 + 30


def test_no_permission_and_bad_token_are_one_clear_line(emu: GitHubEmulator) -> None:
    env = emu.env("run-3", "a")
    emu.jobs_api = False
    with pytest.raises(StoreError, match=r"HTTP 403: Resource not accessible.*actions: read"):
        client(env).statuses()
    emu.jobs_api = True
    with pytest.raises(StoreError, match="HTTP 401: Bad credentials; GITHUB_TOKEN is not accepted"):
        client({**env, "GITHUB_TOKEN": "ghs_wrong"}).statuses()
    with pytest.raises(StoreError, match="404"):
        client({**env, "GITHUB_REPOSITORY": "someone/else"}).statuses()


def test_transient_errors_are_retried(emu: GitHubEmulator) -> None:
    env = emu.env("run-4", "a")
    emu.faults = Faults(rate=0.5, kinds={"500", "503", "drop"}, seed=3)
    jobs = client(env)
    for _ in range(10):
        try:
            assert env["CIFLOW_JOB_ID"] in jobs.statuses()
        except StoreError as exc:  # three faults in a row: the message says so
            assert "after 3 attempts" in str(exc)
    assert jobs.calls > 10  # some calls were retried
    emu.faults = Faults(rate=1.0, kinds={"429"}, retry_after=3600)
    with pytest.raises(StoreError, match="retry after 3600s"):
        jobs.statuses()


def test_outside_github_or_without_token_there_is_no_client(emu: GitHubEmulator) -> None:
    env = emu.env("run-5", "a")
    assert GitHubJobs.from_env({}) is None
    assert GitHubJobs.from_env({k: v for k, v in env.items() if k != "GITHUB_TOKEN"}) is None
    assert GitHubJobs.from_env({**env, "GITHUB_ACTIONS": "false"}) is None
    assert GitHubJobs.from_env({**env, "GITHUB_TOKEN": "", "CIFLOW_GITHUB_TOKEN": "x"}) is not None


def test_worker_ids_carry_their_job() -> None:
    assert job_of(new_worker_id(3, "51725241954")) == "51725241954"
    assert job_of(new_worker_id(3)) is None
    assert job_of("s1-host-j12-345") is None  # a host name with -j in it is not a job


def test_liveness_asks_the_jobs_api_not_heartbeats(emu: GitHubEmulator, tmp_path: Path) -> None:
    a, b = emu.env("run-6", "a"), emu.env("run-6", "b")
    store = open_store(f"file://{tmp_path}")
    watched = new_worker_id(1, b["CIFLOW_JOB_ID"])
    beating = new_worker_id(2)
    live = Liveness(store, RunKeys("r"), timeout=0.0, jobs=client(a), jobs_interval=0.0)
    live.refresh()
    live.dead([watched, beating])  # first sight starts the heartbeat clock
    for _ in range(EVIDENCE):  # evidence: several listings of its own see the silence
        live.refresh()
    live.refresh_jobs()
    assert live.dead([watched, beating]) == {beating}  # silent; the watched job is running
    emu.finish_job("run-6", "b")
    assert live.dead([watched]) == set()  # not asked again yet
    live.refresh_jobs()
    assert live.dead([watched]) == {watched}
    live.jobs_interval = 3600.0
    emu.jobs_api = False
    live.refresh_jobs()  # within the interval: no call, no error
    assert live.jobs_error is None
    live.jobs_interval = 0.0
    live.refresh_jobs()
    assert live.jobs_error is not None and "403" in live.jobs_error
    assert live.dead([watched]) == {watched}  # the last answer still holds
