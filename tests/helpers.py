"""Shared helpers for the tests (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io
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
