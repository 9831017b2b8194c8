from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciflow.masking import MASKER
from ciflow.modules import reset_registry

PIPELINES = Path(__file__).parent / "pipelines"


@pytest.fixture(autouse=True)
def _clean_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no registered modules, no secrets and a private history file."""
    for name in list(os.environ):  # a test suite run inside CI must not write to the CI's files
        if name.startswith(("CIFLOW_", "ACTIONS_", "GITHUB_")) or name in (
            "GITLAB_CI",
            "BUILDKITE",
            "CIRCLECI",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CIFLOW_HISTORY", str(tmp_path / "history.json"))
    reset_registry()
    MASKER.clear()
    yield
    reset_registry()
    MASKER.clear()


@pytest.fixture
def pipelines() -> Path:
    """The folder of tiny pipeline files used by the tests."""
    return PIPELINES


@pytest.fixture
def out() -> io.StringIO:
    """A stream to hand a `Console`; read it with ``out.getvalue()``."""
    return io.StringIO()
