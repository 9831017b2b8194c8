from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_only_the_raiser_failed
from typer.testing import CliRunner

from ciflow import __version__
from ciflow.cli.app import app

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_version_and_help() -> None:
    code, out, _ = invoke("--version")
    assert code == 0 and out.strip() == f"ciflow {__version__}"
    code, out, _ = invoke("--help")
    assert code == 0
    for command in ("run", "list", "graph", "validate"):
        assert command in out


def test_run_prints_summary_and_writes_report(pipelines: Path, tmp_path: Path) -> None:
    report = tmp_path / "out" / "report.json"
    code, out, err = invoke(
        "run", "-f", str(pipelines / "basic.py"), "--report", str(report), "--run-id", "r1"
    )
    assert code == 0, err
    assert "[lint] lint ok" in out and "[test] testing dist/app.whl" in out
    assert "Summary" in out and "OK: 3 module(s): 3 succeeded" in out
    data = json.loads(report.read_text())
    assert data["schema_version"] == 2 and data["run_id"] == "r1" and data["exit_code"] == 0
    modules = {m["name"]: m for m in data["modules"]}
    assert set(modules) == {"lint", "build", "test"}
    assert modules["build"]["result"] == {"path": "dist/app.whl"}
    assert modules["test"]["result"] == "dist/app.whl"
    for m in modules.values():
        assert m["outcome"] == "succeeded" and m["attempts"] == 1
        assert m["start"] <= m["end"] and m["duration"] >= 0


def test_failure_exit_code_and_failures_first_in_summary(pipelines: Path) -> None:
    code, out, _ = invoke("run", "-f", str(pipelines / "failing.py"))
    assert code == 1
    summary = out[out.index("Summary") :]
    rows = [line.split()[0] for line in summary.splitlines()[3:7]]
    assert rows[0] == "fails" and rows[-1] == "cleanup"
    assert "Errors\n  fails (failed): command failed with exit code 3" in summary
    assert "boom" in summary
    assert "FAILED: 4 module(s)" in summary


def test_keep_going_flag(pipelines: Path) -> None:
    code, out, _ = invoke("run", "-f", str(pipelines / "failing.py"), "--keep-going")
    assert code == 1
    assert "[independent] succeeded" in out


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("syntax_error.py", "syntax_error.py:5: syntax error"),
        ("cycle.py", "dependency cycle: "),
        ("unknown_dependency.py", "depends on unknown module 'biuld' (did you mean 'build'?)"),
        ("duplicate.py", "module 'build' is already defined"),
        ("bad_parameter.py", "parameter 'wheel' names no dependency"),
        ("import_error.py", "KeyError: 'missing'"),
        ("missing.py", "pipeline file not found"),
        ("parameter_clash.py", "modules 'a_b' (parameter_clash.py:6) and 'a-b' both bind to"),
        ("long_name.py", "long_name.py:6: module 'xxxx"),
        ("long_name.py", "name has 300 characters; at most 64 (so that every store"),
        ("unmet_requirement.py", "'needs_tool' needs tool 'ciflow-no-such-tool' on PATH"),
    ],
)
def test_user_errors_are_one_line_with_exit_2(pipelines: Path, file: str, message: str) -> None:
    code, out, err = invoke("run", "-f", str(pipelines / file))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ciflow: error: ")
    assert message in err
    assert "Traceback" not in out + err


def test_debug_shows_the_traceback(pipelines: Path) -> None:
    code, _, err = invoke("--debug", "run", "-f", str(pipelines / "cycle.py"))
    assert code == 2 and "Traceback" in err and "CycleError" in err
    code, _, err = invoke("validate", "--debug", "-f", str(pipelines / "cycle.py"))
    assert code == 2 and "Traceback" in err


def test_unmet_requirement_can_be_skipped(pipelines: Path) -> None:
    code, out, err = invoke(
        "run", "-f", str(pipelines / "unmet_requirement.py"), "--skip", "needs_tool"
    )
    assert code == 0, err
    assert "left out with --skip" in out


def test_bad_result_exits_2(pipelines: Path) -> None:
    code, out, _ = invoke("run", "-f", str(pipelines / "bad_result.py"))
    assert code == 2
    assert "does not match its annotation int" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nothing"], "no module named 'nothing'"),
        (["--skip", "tset"], "did you mean 'test'?"),
        (["--category", "nope"], "no module has category 'nope' (categories: build, check, test)"),
    ],
)
def test_selectors_that_match_nothing(pipelines: Path, args: list[str], message: str) -> None:
    code, _, err = invoke("run", "-f", str(pipelines / "basic.py"), *args)
    assert code == 2 and message in err


def test_only_and_category_select(pipelines: Path) -> None:
    code, out, _ = invoke("run", "-f", str(pipelines / "basic.py"), "--only", "build")
    assert code == 0 and "1 module(s)" in out and "[lint]" not in out
    code, out, _ = invoke("run", "-f", str(pipelines / "basic.py"), "--category", "test", "-q")
    assert code == 0 and "3 module(s)" in out and "[test] testing" not in out


def test_usage_error_from_typer_is_exit_2(pipelines: Path) -> None:
    code, _, _ = invoke("run", "--jobs", "0", "-f", str(pipelines / "basic.py"))
    assert code == 2


def test_list_table_and_json(pipelines: Path) -> None:
    code, out, _ = invoke("list", "-f", str(pipelines / "basic.py"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["module", "depends", "on", "category", "tags", "settings"]
    assert lines[3].split()[:4] == ["test", "build,", "lint", "test"]
    code, out, _ = invoke("list", "--json", "-f", str(pipelines / "basic.py"))
    entries = json.loads(out)
    assert [e["name"] for e in entries] == ["lint", "build", "test"]
    assert entries[2]["depends_on"] == ["build", "lint"]


def test_graph_mermaid_and_dot(pipelines: Path) -> None:
    code, out, _ = invoke("graph", "-f", str(pipelines / "basic.py"))
    assert code == 0 and out.startswith("flowchart LR")
    assert "m_build --> m_test" in out and "m_lint --> m_test" in out
    code, out, _ = invoke("graph", "--format", "dot", "-f", str(pipelines / "basic.py"))
    assert code == 0 and '"build" -> "test";' in out and out.startswith("digraph")
    code, _, _ = invoke("graph", "--format", "svg", "-f", str(pipelines / "basic.py"))
    assert code == 2


def test_validate(pipelines: Path) -> None:
    code, out, _ = invoke("validate", "-f", str(pipelines / "basic.py"))
    assert code == 0 and "ok: " in out and "3 module(s), 2 dependencies" in out
    code, out, _ = invoke("validate", "-f", str(pipelines / "unmet_requirement.py"))
    assert code == 0 and "note: this machine cannot run 'needs_tool'" in out
    code, _, err = invoke("validate", "-f", str(pipelines / "cycle.py"))
    assert code == 2 and "dependency cycle" in err


def test_pipeline_file_from_environment(pipelines: Path) -> None:
    code, out, _ = invoke("list", env={"CIFLOW_FILE": str(pipelines / "basic.py")})
    assert code == 0 and "lint" in out


def test_unwritable_report_is_a_clear_error(pipelines: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out, err = invoke(
        "run", "-f", str(pipelines / "basic.py"), "--report", str(blocker / "report.json")
    )
    assert code == 2 and "cannot write the report to" in err
    assert "Summary" in out  # the run itself was reported before


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_cancels_kills_the_tree_and_exits_130(
    pipelines: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "CIFLOW_TEST_PIDS": str(pids), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ciflow",
            "run",
            "-f",
            str(pipelines / "sleeper.py"),
            "--report",
            str(tmp_path / "report.json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids.exists(), "the module never started"
    time.sleep(0.2)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted: cancelling running modules" in out
    assert "[cleanup] cleanup ran" in out  # always_run still ran
    assert "INTERRUPTED" in out and "Summary" in out
    child, grandchild = (int(p) for p in pids.read_text().split())
    assert not _alive(child) and not _alive(grandchild)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["interrupted"] is True and report["exit_code"] == 130
    assert {m["name"]: m["outcome"] for m in report["modules"]} == {
        "sleeps": "cancelled",
        "cleanup": "succeeded",
    }


def test_plan_prices_transfers_by_the_scheme_of_its_store(tmp_path: Path) -> None:
    pipeline = tmp_path / "ciflow.py"
    pipeline.write_text("import ciflow\n\n\n@ciflow.module()\ndef a() -> None:\n    pass\n")
    for url, kind in ((f"file://{tmp_path / 's'}", "file"), ("memory://plan-kind", "memory")):
        result = runner.invoke(
            app, ["plan", "-f", str(pipeline), "--workers", "1", "--store", url,
                  "--run-id", "r", "--json"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["inputs"]["transfer"]["store"] == kind
    result = runner.invoke(app, ["plan", "-f", str(pipeline), "--store-kind", "github"])
    assert result.exit_code == 2  # the option is gone: the store's URL says it


_BASE_EXCEPTIONS = [
    ("KeyboardInterrupt", "KeyboardInterrupt"),
    ("SystemExit", "SystemExit: 3"),
    ("GeneratorExit", "GeneratorExit: closed"),
    ("Custom", "Custom: custom base exception"),
]


@pytest.mark.parametrize("where", ["sync", "async", "skip_if"])
@pytest.mark.parametrize(("kind", "reason"), _BASE_EXCEPTIONS)
def test_a_module_raising_a_base_exception_fails_only_that_module(
    pipelines: Path, tmp_path: Path, where: str, kind: str, reason: str
) -> None:
    """KeyboardInterrupt, SystemExit or any BaseException from a module (its function, async or
    not, or its skip_if) fails that module; the run still ends with the module-failure code."""
    report = tmp_path / "report.json"
    env = {**os.environ, "CIFLOW_TEST_RAISE": kind, "CIFLOW_TEST_WHERE": where}
    proc = subprocess.run(
        [sys.executable, "-m", "ciflow", "run", "-k", "--no-history", "--report", str(report),
         "-f", str(pipelines / "base_exceptions.py")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    modules = assert_only_the_raiser_failed(report, reason)
    if where == "skip_if":
        assert modules["explodes"]["error"].startswith("skip_if raised ")
    assert "interrupted" not in proc.stdout + proc.stderr


_LOADING_COMMANDS = [
    ["run"],
    ["validate"],
    ["list"],
    ["graph"],
    ["plan", "--workers", "1", "--store", "memory://import", "--run-id", "r"],
    ["worker", "--slot", "0", "--store", "memory://import", "--run-id", "r"],
    ["dry-run", "--workers", "1"],
]


def _ciflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ciflow", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("command", _LOADING_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("exit_at_import.py", "the pipeline file called sys.exit(7) at import"),
        ("base_exception_at_import.py", "error while importing the pipeline: Abort: "),
    ],
)
def test_an_exit_or_base_exception_at_import_is_a_definition_error(
    pipelines: Path, command: list[str], file: str, message: str
) -> None:
    """Every command that loads the pipeline exits 2 with one line, not the file's own code."""
    proc = _ciflow(*command, "-f", str(pipelines / file))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"ciflow: error: {file}:")
    assert message in proc.stderr


@pytest.mark.parametrize("command", _LOADING_COMMANDS, ids=lambda c: c[0])
def test_keyboard_interrupt_at_import_is_an_interrupt(pipelines: Path, command: list[str]) -> None:
    proc = _ciflow(*command, "-f", str(pipelines / "interrupt_at_import.py"))
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert proc.stderr == "ciflow: interrupted\n"


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("parameter_clash.py", "both bind to the parameter 'a_b'; rename one of them"),
        ("long_name.py", "name has 300 characters; at most 64"),
    ],
)
def test_validate_refuses_what_a_run_could_not_store_or_bind(
    pipelines: Path, file: str, message: str
) -> None:
    code, out, err = invoke("validate", "-f", str(pipelines / file))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
