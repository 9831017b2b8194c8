"""Re-runs resume a run: a later CI attempt runs only what failed, was cancelled or never
finished (and its dependents), with the results and outputs of earlier attempts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciflow.cli.app import app
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.resume import rerun_set
from ciflow.testing.emulator import GitHubEmulator

runner = CliRunner()
FAST = ["--heartbeat-interval", "0.3", "--heartbeat-timeout", "3", "--jobs", "2", "--poll", "0.1"]
RUN = "rerun-1"


@pytest.fixture
def emu() -> Iterator[GitHubEmulator]:
    with GitHubEmulator("127.0.0.1", 0) as emulator:
        yield emulator


def runners(pipelines: Path, tmp_path: Path, attempt: int, count: int = 2) -> list[Path]:
    """A fresh checkout per worker job of ``attempt`` (runners share nothing but the store)."""
    out = []
    for slot in range(count):
        home = tmp_path / f"attempt{attempt}-slot{slot}"
        home.mkdir(parents=True)
        shutil.copy(pipelines / "rerun.py", home / "rerun.py")
        out.append(home)
    return out


def workers(
    homes: list[Path], store: str, env_of: dict[int, dict[str, str]], run: str | None = RUN
) -> tuple[list[int], list[str]]:
    named = ["--run-id", run] if run else []
    procs = []
    for slot, home in enumerate(homes):
        cmd = [sys.executable, "-m", "ciflow", "worker", "-f", str(home / "rerun.py")]
        cmd += ["--store", store, *named, "--slot", str(slot), *FAST]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=home,
                env={**os.environ, **env_of[slot]},
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        )
    outs = [p.communicate(timeout=120)[0] for p in procs]
    return [p.returncode for p in procs], outs


def plan_on_a_file_store(pipelines: Path, tmp_path: Path) -> str:
    """The plan job of attempt 1, over 2 slots of a file store; returns the store's URL."""
    store = f"file://{tmp_path / 'store'}"
    planned = runner.invoke(
        app, ["plan", "-f", str(pipelines / "rerun.py"), "--workers", "2", "--store", store,
              "--run-id", RUN], env={"CIFLOW_RUN_ATTEMPT": "1"},
    )  # fmt: skip
    assert planned.exit_code == 0, planned.stderr
    return store


def ran(homes: list[Path]) -> list[str]:
    return sorted(
        line
        for h in homes
        if (h / "ran.log").exists()
        for line in (h / "ran.log").read_text().split()
    )


def summary(
    store: str, env: dict[str, str], report: Path, run: str | None = RUN
) -> tuple[int, str]:
    named = ["--run-id", run] if run else []
    result = runner.invoke(
        app, ["summary", "--store", store, *named, "--report", str(report)], env=env
    )
    return result.exit_code, result.stdout + result.stderr


def attempts_of(report: Path) -> dict[str, tuple[str, int | None]]:
    doc = json.loads(report.read_text())
    return {m["name"]: (m["outcome"], m["run_attempt"]) for m in doc["modules"]}


def resume_flow(
    pipelines: Path, tmp_path: Path, store: str, env: dict[str, str] | None = None, *,
    job_env: object = None, run: str | None = RUN, resolved: str = RUN,
) -> None:  # fmt: skip
    """Plan, attempt 1 (test fails), its summary, attempt 2 ("Re-run failed jobs"), summary."""

    def env_of(role: str, attempt: int) -> dict[str, str]:
        base = job_env(role, attempt) if callable(job_env) else {"CIFLOW_RUN_ATTEMPT": str(attempt)}
        return dict(base)

    planned = runner.invoke(
        app,
        ["plan", "-f", str(pipelines / "rerun.py"), "--workers", "2", "--store", store,
         *(["--run-id", run] if run else [])],
        env={**env_of("plan", 1), "GITHUB_OUTPUT": str(tmp_path / "out")},
    )  # fmt: skip
    assert planned.exit_code == 0, planned.stderr
    if store == "github://":  # the plan job hands the run id to the worker jobs
        assert f"run-id={resolved}" in (tmp_path / "out").read_text().splitlines()
    first = runners(pipelines, tmp_path, 1)
    codes, outs = workers(
        first, store, {k: {**env_of(f"work-{k}", 1), "FLAKY": "1"} for k in range(2)}, run
    )
    # every worker job fails, also the one whose own modules succeeded: all of them re-run
    assert codes == [1, 1], outs
    assert any("failed module(s) this worker did not run" in o for o in outs), outs
    assert ran(first) == ["build", "lint", "test"]
    code, text = summary(store, env_of("summary", 1), tmp_path / "r1.json", run)
    assert code == 1, text
    assert attempts_of(tmp_path / "r1.json")["test"] == ("failed", 1)

    second = runners(pipelines, tmp_path, 2)
    codes, outs = workers(second, store, {k: env_of(f"work-{k}", 2) for k in range(2)}, run)
    assert codes == [0, 0], outs
    line = (
        f"attempt 2 resumes run {resolved}: 2 module(s) finished in earlier attempts, 2 run again"
    )
    assert any(line in o for o in outs), outs
    # only what failed and what depends on it ran; test read build's output of attempt 1
    assert ran(second) == ["report", "test"]
    code, text = summary(store, env_of("summary", 2), tmp_path / "r2.json", run)
    assert code == 0, text
    assert "OK: 4 module(s): 4 succeeded" in text
    assert (
        "run attempts (re-run failed jobs resumed the run): 1: 2 module(s); 2: 2 module(s)" in text
    )
    assert attempts_of(tmp_path / "r2.json") == {
        "build": ("succeeded", 1), "lint": ("succeeded", 1),
        "test": ("succeeded", 2), "report": ("succeeded", 2),
    }  # fmt: skip


def test_a_rerun_of_failed_jobs_resumes_the_run_on_a_file_store(
    pipelines: Path, tmp_path: Path
) -> None:
    resume_flow(pipelines, tmp_path, f"file://{tmp_path / 'store'}")


def test_a_rerun_of_failed_jobs_resumes_the_run_on_github(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path
) -> None:
    def job_env(role: str, attempt: int) -> dict[str, str]:
        return emu.env("991", role, attempt=attempt)

    resume_flow(pipelines, tmp_path, "github://", job_env=job_env)
    # attempt 2 saw none of attempt 1's artifacts: plan, carry and build's outputs were carried
    keys = emu.cache_keys()
    assert any(k.endswith(f"runs/{RUN}/plan~") for k in keys), keys
    assert any(f"runs/{RUN}/carry/0001" in k for k in keys), keys
    assert any(f"runs/{RUN}/carried/build/" in k for k in keys), keys


def test_without_a_run_id_a_rerun_finds_the_plan_of_its_workflow_run(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path
) -> None:
    """Workers and summary left to ciflow's default run id (``<run>-<attempt>``) still find
    the plan attempt 1 made."""

    def job_env(role: str, attempt: int) -> dict[str, str]:
        return emu.env("992", role, attempt=attempt)

    resume_flow(pipelines, tmp_path, "github://", job_env=job_env, run=None, resolved="992-1")


def test_without_an_earlier_summary_a_rerun_runs_every_module_again(
    pipelines: Path, tmp_path: Path
) -> None:
    store = plan_on_a_file_store(pipelines, tmp_path)
    first = runners(pipelines, tmp_path, 1)
    codes, _ = workers(
        first, store, {k: {"CIFLOW_RUN_ATTEMPT": "1", "FLAKY": "1"} for k in range(2)}
    )
    assert codes == [1, 1]
    second = runners(pipelines, tmp_path, 2)
    codes, outs = workers(second, store, {k: {"CIFLOW_RUN_ATTEMPT": "2"} for k in range(2)})
    assert codes == [0, 0], outs
    assert any("no earlier attempt's summary recorded what finished" in o for o in outs), outs
    assert ran(second) == ["build", "lint", "report", "test"]


def test_a_rerun_of_all_jobs_is_a_fresh_run(pipelines: Path, tmp_path: Path) -> None:
    """The plan job ran again: its attempt names the run, nothing of attempt 1 is reused."""
    store = f"file://{tmp_path / 'store'}"
    for attempt in (1, 2):
        env = {"CIFLOW_RUN_ATTEMPT": str(attempt)}
        planned = runner.invoke(
            app, ["plan", "-f", str(pipelines / "rerun.py"), "--workers", "1", "--store", store,
                  "--run-id", f"r-{attempt}", "--no-cache"], env=env,
        )  # fmt: skip
        assert planned.exit_code == 0, planned.stderr
        home = runners(pipelines, tmp_path, attempt, 1)
        proc = subprocess.run(
            [sys.executable, "-m", "ciflow", "worker", "-f", str(home[0] / "rerun.py"),
             "--store", store, "--run-id", f"r-{attempt}", "--slot", "0", "--no-cache", *FAST],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "resumes" not in proc.stdout + proc.stderr
        assert ran(home) == ["build", "lint", "report", "test"]


def test_the_rerun_set_is_what_did_not_finish_and_its_dependents() -> None:
    order = ["a", "b", "c", "d", "e"]
    deps = {"b": ["a"], "c": ["b"], "d": [], "e": ["c", "d"]}
    assert rerun_set(order, deps, ["a", "b", "c", "d", "e"]) == []
    assert rerun_set(order, deps, ["a", "c", "d", "e"]) == ["b", "c", "e"]
    assert rerun_set(order, deps, ["a", "b", "c", "e"]) == ["d", "e"]
    assert rerun_set(order, deps, []) == order


def test_a_resumed_attempt_keeps_its_records_apart() -> None:
    keys = RunKeys("42-1")
    again = keys.resumed(2)
    assert again.plan == keys.plan == "runs/42-1/plan"
    assert again.result("m") == "runs/42-1/attempt-2/results/m"
    assert again.cancel == "runs/42-1/attempt-2/cancel"
    assert keys.parse(again.result("m")) is None  # attempt 1's readers never see attempt 2's
    assert again.parse(again.result("m")) is not None
    assert keys.carry(1) == again.carry(1) == "runs/42-1/carry/0001"


def test_a_rerun_of_a_job_whose_modules_all_finished_ends_at_once(
    pipelines: Path, tmp_path: Path
) -> None:
    """A runner lost after its modules were taken over: its job alone re-runs, finds the whole
    run finished and exits 0 without running anything."""
    store = plan_on_a_file_store(pipelines, tmp_path)
    codes, _ = workers(runners(pipelines, tmp_path, 1), store, {k: {} for k in range(2)})
    assert codes == [0, 0]
    code, text = summary(store, {"CIFLOW_RUN_ATTEMPT": "1"}, tmp_path / "r1.json")
    assert code == 0, text
    again = runners(pipelines, tmp_path, 2, 1)
    codes, outs = workers(again, store, {0: {"CIFLOW_RUN_ATTEMPT": "2"}})
    assert codes == [0], outs
    assert (
        f"attempt 2 resumes run {RUN}: 4 module(s) finished in earlier attempts, 0 run again"
        in outs[0]
    )
    assert ran(again) == []
    code, text = summary(store, {"CIFLOW_RUN_ATTEMPT": "2"}, tmp_path / "r2.json")
    assert code == 0 and "OK: 4 module(s): 4 succeeded" in text, text
