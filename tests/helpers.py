"""Shared helpers for the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ciflow.execution.engine import Engine
from ciflow.model.module import registered
from ciflow.model.outcome import RunResult
from ciflow.model.pipeline import Pipeline
from ciflow.ui.console import Console


def run_registered(
    tmp_path: Path, out: io.StringIO, *, color: bool | None = None, **kwargs: Any
) -> RunResult:
    """Run every module the test registered, printing plain lines into ``out``."""
    kwargs.setdefault("jobs", 1)
    return Engine(
        Pipeline(registered()),
        console=Console(out, live=False, color=color),
        handle_signals=False,
        workdir=tmp_path,
        **kwargs,
    ).run()


def assert_only_the_raiser_failed(report: Path, reason: str) -> dict[str, Any]:
    """Check a report of ``pipelines/base_exceptions.py``: the raiser failed with ``reason``,
    its dependents lost a dependency, the rest succeeded. Returns the report's modules by name."""
    modules = {m["name"]: m for m in json.loads(report.read_text())["modules"]}
    assert {name: m["outcome"] for name, m in modules.items()} == {
        "explodes": "failed",
        "needs_it": "dependency_failed",
        "needs_that": "dependency_failed",
        "independent": "succeeded",
        "after_independent": "succeeded",
    }
    assert reason in modules["explodes"]["error"]
    return modules


JS = Path(__file__).parent / "js"


def node_steps(script: str, steps: list[Any], env: dict[str, str], cwd: Path) -> list[Any]:
    """Run a tests/js script in the workspace ``cwd`` with a job's env; return its values."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules").is_dir():
        pytest.fail("needs node 20+ and `npm ci --prefix tests/js`")
    cwd.mkdir(parents=True, exist_ok=True)
    full = {**os.environ, **env, "GITHUB_WORKSPACE": str(cwd), "RUNNER_TEMP": str(cwd / "_t")}
    proc = subprocess.run(
        [node, str(JS / script), json.dumps(steps)],
        cwd=cwd, env=full, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    results: list[dict[str, Any]] = json.loads(lines[-1][len("RESULT ") :])
    assert all(r["ok"] for r in results), results
    return [r["value"] for r in results]
