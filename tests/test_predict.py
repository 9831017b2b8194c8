"""What the plan job reads from the cache: expected hits (no downloads) and run history."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from ciflow.cache.history import KEEP, load_history, record_run
from ciflow.cache.predict import expected_hits, merged_history
from ciflow.cache.session import ModuleCache
from ciflow.execution.engine import Engine
from ciflow.model.outcome import ModuleRecord, Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.planning.history import History
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores.file import FileStore
from ciflow.ui.console import Console

PIPELINE = Path(__file__).parent / "pipelines" / "cached.py"


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    shutil.copy(PIPELINE, root / "cached_pipeline.py")
    (root / "src" / "a.txt").write_text("hello\n")
    (root / "src" / "b.txt").write_text("b\n")
    return root


def _run(root: Path, store: FileStore) -> None:
    pipeline = load_pipeline(root / "cached_pipeline.py")
    cache = ModuleCache(store, pipeline, workdir=root, environ={})
    console = Console(io.StringIO(), live=False)
    Engine(pipeline, console=console, workdir=root, handle_signals=False, cache=cache).run()


def test_expected_hits_follow_the_keys_and_stop_below_a_miss(tmp_path: Path) -> None:
    root = _project(tmp_path)
    store = FileStore(f"file://{tmp_path / 'cache'}")
    pipeline = load_pipeline(root / "cached_pipeline.py")
    assert expected_hits(store, pipeline, pipeline.order) == set()
    _run(root, store)
    assert expected_hits(store, pipeline, pipeline.order) == {"build", "test"}
    # without build in the selection test's key has no product of build: not the stored key
    assert expected_hits(store, pipeline, ["test", "report"]) == set()
    store.stats.counts.clear()
    expected_hits(store, pipeline, pipeline.order)
    assert set(store.stats.counts) == {"list"}  # markers are listed, nothing is downloaded
    (root / "src" / "a.txt").write_text("other\n")
    assert expected_hits(store, pipeline, pipeline.order) == set()  # test's key needs build's


def test_the_plan_costs_expected_hits_near_zero(tmp_path: Path) -> None:
    root = _project(tmp_path)
    store = FileStore(f"file://{tmp_path / 'cache'}")
    _run(root, store)
    pipeline = load_pipeline(root / "cached_pipeline.py")
    hits = expected_hits(store, pipeline, pipeline.order)
    plan = plan_pipeline(pipeline, [RunnerPool(count=2)], cached=hits)
    assert {n: c.source for n, c in plan.inputs.modules.items()} == {
        "build": "cached", "test": "cached", "report": "default",
    }  # fmt: skip
    assert "expected cache hits (2): build, test" in plan.render()


def _record(name: str, seconds: float) -> ModuleRecord:
    return ModuleRecord(name, Outcome.SUCCEEDED, 1, start=1.0, end=1.0 + seconds, duration=seconds)


def test_history_in_the_store_is_the_newest_record_folded_forward(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    assert load_history(store) is None
    assert not record_run(store, [ModuleRecord("a", Outcome.FAILED)])  # nothing to learn
    record_run(store, [_record("a", 10.0)])
    record_run(store, [_record("a", 20.0), _record("b", 1.0)])
    history = load_history(store)
    assert history is not None and history.modules["a"].runs == 2
    assert history.modules["a"].ewma == 0.3 * 20.0 + 0.7 * 10.0
    for _ in range(KEEP + 3):
        record_run(store, [_record("a", 1.0)])
    assert len(store.list("history/")) == KEEP


def test_a_fresh_checkout_plans_from_the_cache_history_a_local_file_wins(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path / 'cache'}")
    record_run(store, [_record("a", 10.0), _record("b", 5.0)])
    missing = tmp_path / "checkout" / ".ciflow" / "history.json"
    assert merged_history(missing, store).modules["a"].ewma == 10.0
    missing.parent.mkdir(parents=True)
    local = History()
    local.record([_record("a", 2.0)])
    missing.write_text(local.to_json())
    merged = merged_history(missing, store)
    assert merged.modules["a"].ewma == 2.0 and merged.modules["b"].ewma == 5.0
    assert merged_history(missing, None).modules.keys() == {"a"}
