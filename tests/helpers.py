"""Shared helpers for the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

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
