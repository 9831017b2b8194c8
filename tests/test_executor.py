"""The worker's hands: a module's result survives a bad stretch of the store."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from ciflow.distributed import executor as executor_module
from ciflow.distributed.events import Ended, Event
from ciflow.distributed.executor import PERSIST_TRIES, Crashed, Identity, ModuleExecutor
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.results import ResultCache
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.stores.base import StoreFlaky, StoreUnavailable
from ciflow.testing.memory import MemoryStore
from ciflow.ui.console import Console


class Unreachable(MemoryStore):
    """Writes of ``key`` fail (after the transport's own retries, as it would) ``failing`` times."""

    def __init__(self, url: str, key: str, failing: int, error: type[StoreUnavailable]) -> None:
        super().__init__(url)
        self.key, self.failing, self.tries, self.error = key, failing, 0, error

    def create(self, key: str, value: bytes, *, sole: bool = False) -> bool:
        if key == self.key:
            self.tries += 1
            if self.tries <= self.failing:
                raise self.error("github:// failed after 6 attempts: 502 Bad Gateway")
        return super().create(key, value, sole=sole)


def _run_lint(
    tmp_path: Path,
    pipelines: Path,
    failing: int,
    monkeypatch: pytest.MonkeyPatch,
    error: type[StoreUnavailable] = StoreFlaky,
) -> tuple[Unreachable, list[Event | Crashed], str]:
    monkeypatch.setattr(executor_module, "PERSIST_PAUSE", 0.01)
    keys = RunKeys("r")
    store = Unreachable(f"memory://{tmp_path.name}", keys.result("lint"), failing, error)
    out = io.StringIO()
    posted: list[Event | Crashed] = []
    me = Identity("w0", 0, keys, tmp_path, keep_going=False)
    pipeline = load_pipeline(pipelines / "basic.py")
    run = ModuleExecutor(
        pipeline, store, ResultCache(store, keys), me, Console(out, live=False), posted.append, 1
    )
    run.start("lint", 1, {})
    deadline = time.monotonic() + 30
    while not posted and time.monotonic() < deadline:
        time.sleep(0.01)
    run.shutdown(wait=True)
    return store, posted, out.getvalue()


def test_a_result_the_store_refused_for_a_while_is_stored_and_the_worker_goes_on(
    tmp_path: Path, pipelines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, posted, out = _run_lint(tmp_path, pipelines, PERSIST_TRIES, monkeypatch)
    [ended] = posted
    assert isinstance(ended, Ended) and ended.outcome is Outcome.SUCCEEDED and ended.written
    assert store.get(RunKeys("r").result("lint")) is not None
    assert out.count("warning: cannot store the result of lint") == PERSIST_TRIES
    assert f"trying again in 0s (1 of {PERSIST_TRIES})" in out


def test_a_store_that_stays_unreachable_ends_the_worker_after_the_bounded_tries(
    tmp_path: Path, pipelines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, posted, _ = _run_lint(tmp_path, pipelines, 10**6, monkeypatch)
    [crashed] = posted
    assert isinstance(crashed, Crashed) and isinstance(crashed.error, StoreUnavailable)
    assert store.tries == 1 + PERSIST_TRIES


def test_a_store_that_refuses_ends_the_worker_without_waiting(
    tmp_path: Path, pipelines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # permissions, a full or read-only disk, a bad token: trying again later would not help
    store, posted, out = _run_lint(tmp_path, pipelines, 10**6, monkeypatch, StoreUnavailable)
    [crashed] = posted
    assert isinstance(crashed, Crashed) and type(crashed.error) is StoreUnavailable
    assert store.tries == 1 and "trying again" not in out
