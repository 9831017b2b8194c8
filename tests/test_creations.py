"""Artifact creations per slot: the estimate, plans within github://'s 500, early refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ciflow
from ciflow.errors import UsageError
from ciflow.model.module import Module
from ciflow.model.pipeline import Pipeline
from ciflow.planning.costs import Transfer
from ciflow.planning.creations import (
    Budget,
    budget_for,
    creations_line,
    module_creations,
    plan_creations,
    slot_creations,
    worker_creations,
)
from ciflow.planning.planner import plan_pipeline
from ciflow.planning.pools import RunnerPool
from ciflow.stores.registry import BACKENDS
from ciflow.testing.emulator import GitHubEmulator

GITHUB = Transfer.for_store("github")


def tiny(n: int) -> Pipeline:
    return Pipeline([Module(lambda: None, name=f"m{i:03d}", cost=1) for i in range(n)])


def skewed() -> Pipeline:
    """A chain of 10 one-minute modules and 200 one-second ones."""
    chain: list[Module] = []
    for i in range(10):
        chain.append(Module(lambda: None, name=f"c{i}", cost=60, depends_on=chain[-1:]))
    return Pipeline([*chain, *(Module(lambda: None, name=f"s{i:03d}", cost=1) for i in range(200))])


def needs_at_github(
    pipeline: Pipeline, plan: ciflow.planning.DistributedExecutionPlan
) -> list[int]:
    """Each slot's estimate as github:// would count it, whatever store the plan was for."""
    return [
        slot_creations((pipeline.modules[m.name] for m in s.modules), span=plan.makespan,
                       heartbeat=30.0, alone=0)
        for s in plan.slots
    ]  # fmt: skip


# --------------------------------------------------------------------------- the estimate


def test_only_github_has_a_creation_budget() -> None:
    assert BACKENDS["github"].profile.creations_per_job == 500
    assert budget_for("github") == Budget("github", 500, BACKENDS["github"].profile.heartbeat)
    others = {s for s, b in BACKENDS.items() if b.profile.creations_per_job is not None}
    assert others == {"github"}
    assert budget_for("file") is None and budget_for("nope") is None


def test_the_estimate_counts_each_record_kind() -> None:
    plain = Module(lambda: None, name="plain")
    assert module_creations(plain) == 3  # result, unsuccessful marker, claim
    busy = Module(
        lambda: None,
        name="busy",
        outputs=["dist/*"],
        not_in_parallel="db",
        parallel_limit=ciflow.ParallelLimit("browsers", 3),
    )
    assert module_creations(busy) == 3 + 1 + 1 + 3  # + outputs, key lease, 3 limit places
    alone = Module(lambda: None, name="alone", not_in_parallel=True)
    assert module_creations(alone) == 3 + 1  # + the run-alone lease
    # registration, slot, done, cancel; 1 + ceil((60 + 1.5 x 100) / 30) = 8 beats; reserve 25
    assert worker_creations(100.0, 30.0, 0) == 4 + 8 + 25
    assert worker_creations(100.0, 30.0, 2) == 4 + 8 + 25 + 2  # quiet records
    assert worker_creations(1000.0, 30.0, 0) > worker_creations(100.0, 30.0, 0)
    assert slot_creations([plain, busy], span=100.0, heartbeat=30.0, alone=0) == 37 + 3 + 8


# --------------------------------------------------------------------------- the planner


def test_a_pipeline_that_cannot_fit_is_refused_with_the_fewest_workers_that_fit() -> None:
    pipeline = tiny(600)
    for slots in (2, 3):
        with pytest.raises(UsageError) as caught:
            plan_pipeline(pipeline, [RunnerPool(count=slots)], transfer=GITHUB)
        line = str(caught.value)
        assert "\n" not in line
        assert line.startswith(f"the busiest slot (slot 0, {600 // slots} modules) needs about ")
        assert (
            "artifact creations, but github:// allows 500 per job: plan with --workers 4," in line
        )
    plan = plan_pipeline(pipeline, [RunnerPool(count=4)], transfer=GITHUB)
    needs = plan_creations(pipeline, plan)
    assert needs is not None and max(needs) <= 500 and len(needs) == 4
    assert creations_line(pipeline, plan) == (
        f"artifact creations per slot: max {max(needs)} of 500 (github://, estimated)"
    )


def test_other_stores_are_not_constrained() -> None:
    pipeline = tiny(600)
    for store in ("file", "s3", "github-cache", "http", "redis"):
        plan = plan_pipeline(pipeline, [RunnerPool(count=2)], transfer=Transfer.for_store(store))
        assert [len(s.modules) for s in plan.slots] == [300, 300]
        assert plan_creations(pipeline, plan) is None and creations_line(pipeline, plan) is None


def test_a_skewed_pipeline_is_rebalanced_within_the_budget() -> None:
    pipeline = skewed()
    free = plan_pipeline(pipeline, [RunnerPool(count=2)], transfer=Transfer.for_store("file"))
    assert max(needs_at_github(pipeline, free)) > 500  # the short modules all beside the chain
    plan = plan_pipeline(pipeline, [RunnerPool(count=2)], transfer=GITHUB)
    needs = plan_creations(pipeline, plan)
    assert needs is not None and max(needs) <= 500
    assert needs == needs_at_github(pipeline, plan)
    assert free.makespan == 600 < plan.makespan <= 1.05 * free.makespan  # measured: 616
    for name, mod in pipeline.modules.items():
        at = {m.name: m for s in plan.slots for m in s.modules}
        for dep in mod.depends_on:
            assert at[dep.name].finish <= at[name].start + 1e-9


def test_modules_that_only_one_slot_can_serve_are_refused_without_a_worker_count() -> None:
    gpu = ciflow.Requires(tags=["gpu"])
    mods = [Module(lambda: None, name=f"g{i:03d}", cost=1, requires=gpu) for i in range(200)]
    pools = [RunnerPool(count=3), RunnerPool(count=1, runs_on="gpu-box", tags=("gpu",))]
    with pytest.raises(UsageError, match=r"slot 3, 200 modules\).*add runners that can serve"):
        plan_pipeline(Pipeline(mods), pools, transfer=GITHUB)


def test_a_run_too_long_for_any_number_of_slots_is_refused() -> None:
    # a 4-hour chain: its heartbeats alone exceed 500 on whichever slot runs it
    chain: list[Module] = []
    for i in range(4):
        chain.append(Module(lambda: None, name=f"c{i}", cost=3600, depends_on=chain[-1:]))
    with pytest.raises(UsageError, match=r"no plan over up to 4 slots fits \(heartbeats every 30s"):
        plan_pipeline(Pipeline(chain), [RunnerPool(count=1)], transfer=GITHUB)


# --------------------------------------------------------------------------- ciflow plan


def test_ciflow_plan_over_github_refuses_early_and_reports_the_estimate(tmp_path: Path) -> None:
    file = tmp_path / "many.py"
    file.write_text(
        "import ciflow\n\nfor i in range(600):\n"
        "    ciflow.module(name=f'm{i:03d}', cost=1)(lambda ctx: None)\n"
    )
    with GitHubEmulator("127.0.0.1", 0) as emu:

        def plan(workers: int, job: str) -> subprocess.CompletedProcess[str]:
            args = ["plan", "-f", str(file), "--workers", str(workers), "--store", "github://"]
            return subprocess.run(
                [sys.executable, "-m", "ciflow", *args, "--run-id", "7-1", "--no-cache"],
                env={"PATH": "/usr/bin:/bin", **emu.env("7", job)},
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        refused = plan(2, "plan-a")
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1
        assert refused.stderr.startswith("ciflow: error: the busiest slot (slot 0, 300 modules)")
        assert "github:// allows 500 per job: plan with --workers 4," in refused.stderr
        assert emu.calls.get("CreateArtifact", 0) == 0  # refused before publishing the plan
        planned = plan(4, "plan-b")
        assert planned.returncode == 0, planned.stderr
        assert "  artifact creations per slot: max 490 of 500" in planned.stdout
