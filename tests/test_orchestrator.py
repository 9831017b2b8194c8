"""What the plan job and `ciflow status` read from a run's store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import register
from ciflow.distributed.messages import Claim, Heartbeat, encode
from ciflow.distributed.orchestrator import publish_plan, read_stored_plan, render_status
from ciflow.distributed.results import publish_result
from ciflow.errors import UsageError
from ciflow.model.outcome import ModuleRecord, Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.model.requirements import Capabilities
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores import open_store


def test_status_of_a_run_in_progress(tmp_path: Path, pipelines: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    keys = RunKeys("r1")
    assert read_stored_plan(store, keys) is None
    pipeline = load_pipeline(pipelines / "distributed.py")
    plan = plan_pipeline(pipeline, [RunnerPool(count=2, os=None)])
    publish_plan(store, keys, plan)
    publish_plan(store, keys, plan)  # the same plan again is fine
    other = plan.model_copy(update={"makespan": plan.makespan + 1})
    with pytest.raises(UsageError, match="already has a different plan"):
        publish_plan(store, keys, other)
    caps = Capabilities.detect(set(), (), 1)
    register(store, keys, "s0-a-1", 0, caps)
    register(store, keys, "s1-b-2", 1, caps)
    register(store, keys, "s2-c-3-j51725241954", 2, caps)
    done = ModuleRecord("prepare", outcome=Outcome.SUCCEEDED, result=b"1")
    publish_result(store, keys, done, attempt=1, worker="s0-a-1", slot=0, workdir=tmp_path)
    beat = Heartbeat(worker="s0-a-1", seq=3, at=time.time(), running=["unit_a"])
    store.create(keys.alive("s0-a-1", 3), encode(beat))
    grant = Claim(module="unit_b", attempt=1, worker="s1-b-2", slot=1, at=0, granted_by="s0-a-1")
    store.create(keys.claim("unit_b", 1), encode(grant))

    text = render_status(store, keys)
    assert "slot 0: s0-a-1" in text and "last heartbeat" in text
    assert "slot 1: s1-b-2" in text and "no heartbeat yet" in text
    assert "slot 2: s2-c-3-j51725241954" in text
    assert "watched through CI job 51725241954 (no heartbeats)" in text
    assert "prepare: succeeded by s0-a-1 (slot 0, attempt 1)" in text
    assert "unit_a: running on s0-a-1 (as of its last heartbeat)" in text
    assert "unit_b: claimed by s1-b-2 (attempt 1)" in text
    report_slot = plan.slot_of("report")
    assert f"report: waiting (planned on slot {report_slot})" in text
    assert "modules: 1 succeeded, 4 pending" in text
