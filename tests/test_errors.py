"""The one table of exit codes, and every command giving the same code for the same condition.

Conditions: a definition error, a module failure, missing results, a user error, an interrupt,
and (for ``summary``) a run that does not exist. Commands: ``run``, ``dry-run``, ``worker``,
``summary``, ``plan``, ``validate``, each as the user runs it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciflow.cli.app import app
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.orchestrator import publish_plan
from ciflow.errors import (
    CiflowError,
    ExitCode,
    Interrupted,
    PipelineError,
    RunNotFound,
    UsageError,
)
from ciflow.model.pipeline import load_pipeline
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores import open_store

runner = CliRunner()
FAST = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]


def _cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _ciflow(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciflow", *args], capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _dry_run(file: Path, store: Path, *extra: str) -> tuple[int, str, dict[str, object], int]:
    """A one-worker dry-run kept in ``store``, then ``summary`` of it: codes, output, report."""
    report = store.parent / "report.json"
    proc = _ciflow("dry-run", "-w", "1", "-f", str(file), "--store", f"file://{store}",
                   "--report", str(report), *extra)  # fmt: skip
    run_id = next((store / "runs").iterdir()).name
    summary, _, _ = _cli("summary", "--store", f"file://{store}", "--run-id", run_id)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(report.read_text()), summary


def _worker(file: Path, store: Path) -> tuple[int, int]:
    """One worker over a one-slot plan, then ``summary``: their exit codes."""
    url, keys = f"file://{store}", RunKeys("table")
    plan = plan_pipeline(load_pipeline(file), [RunnerPool(count=1, tools=None)])
    publish_plan(open_store(url), keys, plan)
    worker, _, _ = _cli("worker", "--slot", "0", "-f", str(file), "--store", url,
                        "--run-id", "table", *FAST)  # fmt: skip
    summary, _, _ = _cli("summary", "--store", url, "--run-id", "table")
    return worker, summary


def test_the_table() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "FAILED": 1, "USAGE": 2, "INCOMPLETE": 3, "NO_RUN": 4, "INTERRUPTED": 130,
    }  # fmt: skip
    assert CiflowError.exit_code == ExitCode.FAILED
    assert UsageError.exit_code == PipelineError.exit_code == ExitCode.USAGE
    assert RunNotFound.exit_code == ExitCode.NO_RUN
    assert Interrupted.exit_code == ExitCode.INTERRUPTED
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for code in ExitCode:
        assert f"| `{int(code)}` | `{code.name}` |" in readme  # the documented table


@pytest.mark.parametrize(
    ("name", "code"), [("bad_result.py", ExitCode.USAGE), ("failing.py", ExitCode.FAILED)]
)
def test_a_definition_error_and_a_module_failure_give_one_code_everywhere(
    tmp_path: Path, pipelines: Path, name: str, code: ExitCode
) -> None:
    file = pipelines / name
    run, out, _ = _cli("run", "-f", str(file), "--no-history")
    assert run == code, out
    dry, text, report, summary = _dry_run(file, tmp_path / "dry")
    assert (dry, report["exit_code"], summary) == (code, code, code), text
    assert (code == ExitCode.USAGE) == ("FAILED (pipeline error)" in text)
    assert _worker(file, tmp_path / "one") == (code, code)


def test_a_definition_the_planner_sees_is_a_usage_error_for_every_command(
    tmp_path: Path, pipelines: Path
) -> None:
    file = str(pipelines / "cycle.py")
    url = f"file://{tmp_path / 'store'}"
    codes = {
        "run": _cli("run", "-f", file)[0],
        "validate": _cli("validate", "-f", file)[0],
        "plan": _cli("plan", "-f", file, "--workers", "2")[0],
        "worker": _cli("worker", "--slot", "0", "-f", file, "--store", url, "--run-id", "x")[0],
        "dry-run": _ciflow("dry-run", "-f", file).returncode,
    }
    assert set(codes.values()) == {ExitCode.USAGE}, codes


def test_a_user_error_is_2_for_every_command(pipelines: Path) -> None:
    for command in ("run", "dry-run", "worker", "summary", "plan", "validate"):
        assert _cli(command, "--no-such-flag")[0] == ExitCode.USAGE, command
    assert _cli("summary", "--run-id", "x")[0] == ExitCode.USAGE  # no store


def test_missing_results_are_3_for_dry_run_and_summary_and_never_ok(
    tmp_path: Path, pipelines: Path
) -> None:
    dry, text, report, summary = _dry_run(pipelines / "slow.py", tmp_path / "dry",
                                          "--kill", "0@1.5")  # fmt: skip
    assert (dry, report["exit_code"], summary) == (3, 3, 3), text
    assert "FAILED (results missing): 2 module(s): " in text and "OK:" not in text
    modules = {m["name"]: m["outcome"] for m in report["modules"]}  # type: ignore[union-attr]
    assert modules["slow"] == "missing" and modules["quick"] in ("succeeded", "missing")


def test_a_deleted_result_makes_the_summary_incomplete(tmp_path: Path, pipelines: Path) -> None:
    store = tmp_path / "store"
    assert _worker(pipelines / "basic.py", store) == (0, 0)
    (store / "runs" / "table" / "results" / "build").unlink()
    code, out, _ = _cli("summary", "--store", f"file://{store}", "--run-id", "table")
    assert code == ExitCode.INCOMPLETE
    assert "FAILED (results missing): 3 module(s): 2 succeeded, 1 missing" in out


@pytest.mark.parametrize(
    ("code", "says"), [(errno.ENOSPC, "is full"), (errno.EROFS, "is on a read-only file system")]
)
def test_a_store_that_fills_up_or_turns_read_only_mid_run_is_one_line_and_never_ok(
    tmp_path: Path, pipelines: Path, monkeypatch: pytest.MonkeyPatch, code: int, says: str
) -> None:
    file, store = pipelines / "basic.py", tmp_path / "store"
    url, keys = f"file://{store}", RunKeys("table")
    plan = plan_pipeline(load_pipeline(file), [RunnerPool(count=1, tools=None)])
    publish_plan(open_store(url), keys, plan)  # the plan got in; the results will not
    real_open = os.open

    def failing_open(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if str(path).startswith(str(store / "runs" / "table" / "results")):
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, mode)

    with monkeypatch.context() as patched:
        patched.setattr(os, "open", failing_open)
        worker, out, err = _cli("worker", "--slot", "0", "-f", str(file), "--store", url,
                                "--run-id", "table", *FAST)  # fmt: skip
    assert worker == ExitCode.FAILED, out
    assert err.startswith(f"ciflow: error: store folder {store} {says}") and err.count("\n") == 1
    assert "Traceback" not in out + err
    summary, out, _ = _cli("summary", "--store", url, "--run-id", "table")
    assert summary == ExitCode.INCOMPLETE
    assert "FAILED (results missing): 3 module(s): 3 missing" in out and "OK" not in out


def test_summary_of_a_run_that_does_not_exist_is_one_line_and_4(tmp_path: Path) -> None:
    for url in (f"file://{tmp_path / 'nostore'}", f"file://{tmp_path}"):
        code, out, err = _cli("summary", "--store", url, "--run-id", "nope")
        assert code == ExitCode.NO_RUN and out == ""
        assert err == f"ciflow: error: no run 'nope' in {url}: no plan and no results; " \
            "check --store and --run-id\n"  # fmt: skip
    assert not (tmp_path / "nostore").exists()  # reading created nothing


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists()


def test_an_interrupt_is_130_for_run_dry_run_and_worker(tmp_path: Path, pipelines: Path) -> None:
    codes = {}
    for command in ("run", "dry-run"):
        pids = tmp_path / f"{command}.pids"
        proc = subprocess.Popen(
            [sys.executable, "-m", "ciflow", command, "-f", str(pipelines / "sleeper.py")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "CIFLOW_TEST_PIDS": str(pids)}, cwd=tmp_path,
        )  # fmt: skip
        _wait_for(pids)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        codes[command] = proc.returncode
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow", "worker", "--slot", "0", "-f",
         str(pipelines / "basic.py"), "--store", f"file://{tmp_path / 'store'}", "--run-id", "x"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and "registered as" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    codes["worker"] = proc.returncode
    assert codes == {"run": 130, "dry-run": 130, "worker": 130}
