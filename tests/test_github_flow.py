"""The whole GitHub flow on one machine: the emulator, a plan job and 4 worker jobs.

Every process gets the variables a runner gives a job of one workflow run (distinct job ids,
one run id); they share nothing but the emulated artifact service behind ``github://``.
"""

from __future__ import annotations

import io
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import node_steps
from typer.testing import CliRunner

from ciflow.cli.app import app
from ciflow.distributed.dryrun import start_workers, supervise
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.results import read_run
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores import open_store
from ciflow.testing.emulator import Faults, GitHubEmulator
from ciflow.ui.console import Console

runner = CliRunner()
RUN = "4242"
RUN_ID = f"{RUN}-1"
FAST = ["--heartbeat-interval", "0.3", "--heartbeat-timeout", "2", "--jobs", "2", "--poll", "0.2"]


@pytest.fixture
def emu() -> Iterator[GitHubEmulator]:
    with GitHubEmulator("127.0.0.1", 0) as emulator:
        yield emulator


def github_run(
    emu: GitHubEmulator,
    file: Path,
    tmp_path: Path,
    *,
    env_of: dict[int, dict[str, str]] | None = None,
    kills: Any = (),
    extra: list[str] | None = None,
) -> tuple[Any, list[int], str]:
    """Plan job, then 4 worker jobs, then the summary job, as a workflow would run them."""
    output = tmp_path / "github_output"
    plan = runner.invoke(
        app,
        ["plan", "-f", str(file), "--workers", "4", "--store", "github://"],
        env={**emu.env(RUN, "plan"), "GITHUB_OUTPUT": str(output)},
    )
    assert plan.exit_code == 0, plan.stderr
    matrix = json.loads(output.read_text().splitlines()[0].removeprefix("matrix="))
    assert [m["slot"] for m in matrix["include"]] == [0, 1, 2, 3]
    envs = {k: {**emu.env(RUN, f"work-{k}"), **(env_of or {}).get(k, {})} for k in range(4)}
    out = io.StringIO()
    procs = start_workers(
        4,
        pipeline_file=file,
        store_url="github://",
        run_id=RUN_ID,
        extra=extra or FAST,
        env_of=envs,
    )
    codes = supervise(  # as GitHub does, the emulator's jobs API reports ended jobs completed
        procs,
        Console(out, live=False),
        kills,
        on_exit=lambda slot, code: emu.finish_job(
            RUN, f"work-{slot}", "success" if code == 0 else "failure"
        ),
    )
    with pytest.MonkeyPatch.context() as mp:
        for name, value in emu.env(RUN, "summary").items():
            mp.setenv(name, value)
        store = open_store("github://")
        result = read_run(store, RunKeys(RUN_ID), load_pipeline(file).order)
    return result, codes, out.getvalue()


def expected(file: Path) -> dict[str, tuple[Outcome | None, bytes | None]]:
    from ciflow.execution.engine import Engine

    run = Engine(
        load_pipeline(file),
        console=Console(io.StringIO(), live=False),
        handle_signals=False,
        keep_going=True,
    ).run()
    return {r.name: (r.outcome, r.result) for r in run.records}


def test_github_flow_matches_a_local_run(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path
) -> None:
    file = pipelines / "distributed.py"
    result, codes, out = github_run(emu, file, tmp_path)
    assert codes == [0, 0, 0, 0], out
    assert {r.name: (r.outcome, r.result) for r in result.records} == expected(file)
    calls = sum(emu.calls.values())
    assert calls > 0 and emu.calls.get("CreateArtifact", 0) >= len(result.records)
    # the summary job reports what the workers' API calls were
    step_summary = tmp_path / "step_summary.md"
    summary = runner.invoke(
        app,
        ["summary", "--store", "github://", "--run-id", RUN_ID],
        env={**emu.env(RUN, "summary"), "GITHUB_STEP_SUMMARY": str(step_summary)},
    )
    assert summary.exit_code == 0, summary.stderr
    line = next(x for x in summary.stdout.splitlines() if x.startswith("API calls by 4 worker(s)"))
    assert "CreateArtifact" in line and "per module" in line
    assert line in step_summary.read_text()


@pytest.mark.parametrize("jobs_api", [True, False])
def test_github_flow_survives_a_killed_worker(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path, jobs_api: bool
) -> None:
    """Liveness from the jobs API (no heartbeat artifacts), or heartbeats when it says 403."""
    emu.jobs_api = jobs_api
    file = pipelines / "distributed.py"
    owner = plan_pipeline(load_pipeline(file), [RunnerPool(count=4)]).slot_of("unit_a")
    assert owner is not None
    # one module at a time: a SIGKILL in the middle of another module's upload would leave its
    # artifact name reserved for good (see README, Known gaps)
    # a jobs-API budget that lets every listing ask (the default spaces looks 90 s apart here)
    env_of = {k: {"CIFLOW_JOBS_API_BUDGET": "1000000"} for k in range(4)}
    env_of[owner]["CIFLOW_FAILPOINT"] = "before-result:unit_a"
    result, codes, out = github_run(
        emu, file, tmp_path, env_of=env_of, extra=[*FAST, "--jobs", "1"]
    )  # fmt: skip
    assert codes[owner] == -signal.SIGKILL, out
    assert {r.name: (r.outcome, r.result) for r in result.records} == expected(file), out
    unit_a = next(r for r in result.records if r.name == "unit_a")
    assert unit_a.attempts == 2 and unit_a.slot != owner
    beats = [n for m, _, n in emu.call_log if m == "CreateArtifact" and n and "~alive~" in n]
    if jobs_api:
        assert out.count("liveness: the jobs API watches job") == 4, out
        assert beats == [] and emu.rest_calls >= 4
        assert f"taking over unit_a from s{owner}-" in out and "-j" in unit_a.worker
    else:
        assert out.count("liveness: heartbeats (GitHub jobs API: HTTP 403") == 4, out
        assert beats  # liveness needed heartbeat artifacts


def test_github_flow_with_429s_and_5xx(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path
) -> None:
    emu.faults = Faults(rate=0.15, kinds={"429", "500", "503"}, seed=7, retry_after=1)
    file = pipelines / "distributed.py"
    result, codes, out = github_run(emu, file, tmp_path)
    assert codes == [0, 0, 0, 0], out
    assert {r.name: (r.outcome, r.result) for r in result.records} == expected(file)


FAIL_FAST = """
import os
import ciflow

FLAG = os.environ["CIFLOW_TEST_FAILED_FLAG"]


@ciflow.module(name="boom", depends_on=["m9"])
def boom(ctx, m9: int) -> int:
    open(FLAG, "w").close()
    raise RuntimeError("planned failure")
"""

LATE = """

@ciflow.module(name="m{i}", depends_on={deps!r})
def m{i}(ctx{params}) -> int:
    if os.path.exists(FLAG):  # started after boom failed: only a cancel ends it soon
        ctx.run("sleep 30")
        return -1
    ctx.run("sleep {sleep}")
    return {i}
"""


def test_github_fail_fast_cancels_what_starts_after_the_failure_and_every_worker_exits(
    emu: GitHubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail-fast mid-run with 4 workers busy: a module a worker starts after the failure (the
    cancel read in the batch that answered its acquire) is cancelled too, never left to run to
    its end while every worker waits for it; the failing worker exits 1, the others 0."""
    monkeypatch.setenv("CIFLOW_TEST_FAILED_FLAG", str(tmp_path / "failed"))
    text = FAIL_FAST
    for i in range(48):
        deps = [f"m{i - 8}"] if i >= 8 else []
        params = f", m{i - 8}: int" if deps else ""
        sleep = 0.1 + (i * 7 % 5) / 10
        text += LATE.format(i=i, deps=deps, params=params, sleep=f"{sleep:.1f}")
    file = tmp_path / "ciflow.py"
    file.write_text(text)
    result, codes, out = github_run(emu, file, tmp_path)
    records = {r.name: r for r in result.records}
    assert records["boom"].outcome is Outcome.FAILED, out
    late = [r.name for r in result.records if r.result == b"-1"]
    assert late == [], out  # started after the failure and ran to its end: not cancelled
    assert all(r.outcome is not None for r in result.records), out
    failed_on = records["boom"].slot
    assert failed_on is not None
    assert codes == [1, 1, 1, 1], out  # a job that did not re-run a failure never turns green
    assert out.count("run cancelled: cancelled after boom failed") == 4, out


def _cached_project(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "checkout"
    (root / "src").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "pipelines" / "cached.py", root / "cached_pipeline.py")
    (root / "src" / "a.txt").write_text("hello\n")
    (root / "src" / "b.txt").write_text("b\n")
    return root


def _workflow(emu: GitHubEmulator, file: Path, tmp_path: Path, run: str) -> tuple[str, str, Any]:
    """One workflow run of examples/github (plan, 2 workers, summary) on branch main; the
    result cache is the default one there: the Actions cache. Returns the plan's and the
    summary's output and the run."""
    output = tmp_path / f"github_output_{run}"
    plan = runner.invoke(
        app, ["plan", "-f", str(file), "--workers", "2", "--store", "github://"],
        env={**emu.env(run, "plan", ref="main"), "GITHUB_OUTPUT": str(output)},
    )  # fmt: skip
    assert plan.exit_code == 0, plan.stderr
    envs = {k: emu.env(run, f"work-{k}", ref="main") for k in range(2)}
    procs = start_workers(2, pipeline_file=file, store_url="github://", run_id=f"{run}-1",
                          extra=FAST, env_of=envs)  # fmt: skip
    codes = supervise(procs, Console(io.StringIO(), live=False), ())
    assert codes == [0, 0]
    summary = runner.invoke(
        app, ["summary", "--store", "github://", "--run-id", f"{run}-1"],
        env=emu.env(run, "summary", ref="main"),
    )  # fmt: skip
    assert summary.exit_code == 0, summary.stdout + summary.stderr
    with pytest.MonkeyPatch.context() as mp:
        for name, value in emu.env(run, "summary", ref="main").items():
            mp.setenv(name, value)
        result = read_run(open_store("github://"), RunKeys(f"{run}-1"), load_pipeline(file).order)
    return plan.stdout, summary.stdout, result


def test_a_second_workflow_run_skips_unchanged_modules_through_the_actions_cache(
    emu: GitHubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.delenv("CIFLOW_CACHE")  # the workflow sets nothing: the Actions cache it is
    root = _cached_project(tmp_path)
    file = root / "cached_pipeline.py"
    plan, summary, first = _workflow(emu, file, tmp_path, "7001")
    assert {r.name: r.cache for r in first.records} == {
        "build": "miss: no entry", "test": "miss: no entry", "report": None,
    }  # fmt: skip
    assert "costs from default: 3" in plan
    shutil.rmtree(root / "build")
    (root / "ran.log").unlink()
    plan, summary, second = _workflow(emu, file, tmp_path, "7002")
    assert "expected cache hits (2): build, test" in plan
    assert "costs from cached: 2, history: 1" in plan  # history the first summary recorded
    assert {r.name: r.outcome for r in second.records} == {
        "build": Outcome.CACHED, "test": Outcome.CACHED, "report": Outcome.SUCCEEDED,
    }  # fmt: skip
    assert (root / "ran.log").read_text().split() == ["report"]
    assert (root / "build" / "out.txt").read_text() == "HELLO\n"
    assert "cache: 2 hit(s), 0 miss(es)" in summary
    # the official @actions/cache client restores the outputs ciflow stored with the entry
    (ref,) = _outputs_keys(emu, "build")
    workspace = tmp_path / "elsewhere"
    steps = [{"op": "restore", "key": ref, "paths": ["build/out.txt"]}]
    assert node_steps("cache.mjs", steps, emu.env("7003", "j", ref="main"), workspace) == [ref]
    assert (workspace / "build" / "out.txt").read_text() == "HELLO\n"


def _outputs_keys(emu: GitHubEmulator, module: str) -> list[str]:
    """The cache keys of ``module``'s output archives, as the emulator holds them."""
    prefix = f"ciflow/cache/1/{module}/outputs/"
    return sorted({key for key in emu.cache_keys() if key.startswith(prefix)})
