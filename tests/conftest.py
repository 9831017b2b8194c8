from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ciflow.execution.masking import MASKER
from ciflow.model.module import reset_registry
from ciflow.testing.emulator import Faults, GitHubEmulator

PIPELINES = Path(__file__).parent / "pipelines"


@pytest.fixture(autouse=True)
def _clean_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no registered modules, no secrets, a private history file and a
    private result cache (never a folder beside a pipeline of tests/pipelines)."""
    for name in list(os.environ):  # a test suite run inside CI must not write to the CI's files
        if name.startswith(("CIFLOW_", "ACTIONS_", "GITHUB_")) or name in (
            "GITLAB_CI",
            "BUILDKITE",
            "CIRCLECI",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CIFLOW_HISTORY", str(tmp_path / "history.json"))
    monkeypatch.setenv("CIFLOW_CACHE", str(tmp_path / "result-cache"))
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


@pytest.fixture(scope="module")
def emulator() -> Iterator[GitHubEmulator]:
    """One GitHub emulator on loopback per test module."""
    with GitHubEmulator("127.0.0.1", 0) as emu:
        yield emu


@pytest.fixture
def emu(emulator: GitHubEmulator) -> Iterator[GitHubEmulator]:
    """The module's emulator with default settings, no faults and zeroed counters."""
    emulator.faults = Faults()
    emulator.artifact_limit = 500
    emulator.jobs_api = True
    emulator.reset_calls()
    yield emulator
    emulator.faults = Faults()
    emulator.jobs_api = True


@pytest.fixture(params=["file", "redis", "s3", "http"])
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """A store URL and the env its clients need, on a real server of each kind."""
    kind = request.param
    if kind == "file":
        yield f"file://{tmp_path / 'store'}", {}
    elif kind == "redis":
        from redis_server import redis_server

        with redis_server(tmp_path / "redis") as server:
            yield server.url(), {}
    elif kind == "s3":
        from s3_server import MotoServer, aws_env, client

        with MotoServer() as moto:
            client(moto.url).create_bucket(Bucket="alone")
            yield "s3://alone/run", aws_env(moto.url)
    else:
        from test_store_http import RW, serve

        served = serve(tmp_path)
        try:
            yield served.url, {"CIFLOW_STORE_TOKEN": RW}
        finally:
            assert served.stop() == 0
