"""The package stays `mypy --strict` and `ruff` clean (the house rules), checked like a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_mypy_strict_is_clean() -> None:
    result = _run("mypy", "--strict", "ciflow")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "ciflow", "tests", "bench", "examples")
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from ciflow.cli.app import app; "
        "heavy = [m for m in ('pydantic', 'requests', 'pyzstd', 'ciflow.execution.engine') "
        "if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
