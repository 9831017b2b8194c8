"""Distributed runs with real worker processes over a file store."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ciflow.cli.app import app
from ciflow.distributed.dryrun import start_workers, supervise
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.messages import Registration, decode, encode
from ciflow.distributed.orchestrator import publish_plan
from ciflow.distributed.results import read_run
from ciflow.errors import ExitCode
from ciflow.execution.engine import Engine
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores import open_store
from ciflow.stores.base import StoreError
from ciflow.ui.console import Console

runner = CliRunner()
FAST = ["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5", "--jobs", "2"]

TEMPLATE = """
import json, os, time
import ciflow

LOG = os.environ["CIFLOW_TEST_LOG"]


def mark(name, what):
    with open(LOG, "a") as fh:
        fh.write(json.dumps([name, what, time.time(), os.getpid()]) + "\\n")
"""

MODULE = """

@ciflow.module(name="{name}", depends_on={deps}, not_in_parallel={keys!r}, cost={cost})
def {name}(ctx{params}) -> int:
    mark("{name}", "start")
    time.sleep({sleep})
    mark("{name}", "end")
    if {fail}:
        raise RuntimeError("planned failure of {name}")
    return 1 + {total}
"""


def write_pipeline(
    path: Path,
    deps: list[list[int]],
    failing: set[int],
    keyed: set[int],
    alone: Collection[int] = (),
) -> None:
    text = TEMPLATE
    for i, ds in enumerate(deps):
        names = [f"m{d}" for d in ds]
        text += MODULE.format(
            name=f"m{i}",
            deps=repr(names),
            keys=True if i in alone else "db" if i in keyed else (),
            cost=1,
            params="".join(f", {n}: int" for n in names),
            sleep=0.05,
            fail=i in failing,
            total=" + ".join(names) or "0",
        )
    path.write_text(text)


def distributed_run(
    tmp_path: Path,
    file: Path,
    workers: int,
    *,
    extra: list[str] | None = None,
    env_of: dict[int, dict[str, str]] | None = None,
    kills: Any = (),
) -> tuple[Any, list[int], Path, str]:
    """Plan, start ``workers`` real worker processes on a file store, wait, read the run."""
    store_dir = tmp_path / "store"
    url = f"file://{store_dir}"
    store = open_store(url)
    keys = RunKeys("test-run")
    pipeline = load_pipeline(file)
    plan = plan_pipeline(pipeline, [RunnerPool(count=workers, os=None)])
    publish_plan(store, keys, plan)
    out = io.StringIO()
    procs = start_workers(
        workers,
        pipeline_file=file,
        store_url=url,
        run_id="test-run",
        extra=[*FAST, *(extra or [])],
        env_of=env_of,
    )
    codes = supervise(procs, Console(out, live=False), kills)
    return read_run(store, keys, pipeline.order), codes, store_dir, out.getvalue()


def local_outcomes(file: Path, tmp_path: Path) -> dict[str, tuple[Outcome | None, bytes | None]]:
    result = Engine(
        load_pipeline(file),
        console=Console(io.StringIO(), live=False),
        keep_going=True,
        workdir=tmp_path,
        handle_signals=False,
    ).run()
    return {r.name: (r.outcome, r.result) for r in result.records}


def read_log(path: Path) -> dict[str, dict[str, float]]:
    spans: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        name, what, at, _pid = json.loads(line)
        spans.setdefault(name, {})[what] = at
    return spans


Case = tuple[list[list[int]], set[int], set[int], set[int], int]


@st.composite
def dags(draw: st.DrawFn) -> Case:
    n = draw(st.integers(2, 9))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else [] for i in range(n)]
    failing = draw(st.sets(st.integers(0, n - 1), max_size=1))
    keyed = draw(st.sets(st.integers(0, n - 1), max_size=4))
    alone = draw(st.sets(st.integers(0, n - 1), max_size=1)) - keyed
    return deps, failing, keyed, alone, draw(st.integers(2, 8))


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=dags())
def test_distributed_invariants_on_random_pipelines(
    tmp_path_factory: pytest.TempPathFactory, case: Case
) -> None:
    deps, failing, keyed, alone, workers = case
    tmp_path = tmp_path_factory.mktemp("run")
    log = tmp_path / "log.jsonl"
    os.environ["CIFLOW_TEST_LOG"] = str(log)
    file = tmp_path / "ciflow.py"
    write_pipeline(file, deps, failing, keyed, alone)
    try:
        result, codes, store_dir, out = distributed_run(
            tmp_path, file, workers, extra=["--keep-going"]
        )
        spans = read_log(log)
        log.unlink()
        expected = local_outcomes(file, tmp_path)
    finally:
        del os.environ["CIFLOW_TEST_LOG"]
    got = {r.name: (r.outcome, r.result) for r in result.records}
    assert got == expected, out  # same outcomes and results as `ciflow run`
    assert all(r.outcome is not None for r in result.records)  # exactly one outcome each
    assert sorted(codes) == sorted(codes) and set(codes) <= {0, 1}
    for i, ds in enumerate(deps):
        if f"m{i}" not in spans:
            continue
        for d in ds:  # a dependent starts only after its dependency's result is readable
            written = (store_dir / "runs" / "test-run" / "results" / f"m{d}").stat().st_mtime
            assert spans[f"m{i}"]["start"] >= written - 0.01
    ran = [f"m{i}" for i in keyed if f"m{i}" in spans]
    for a in ran:
        for b in ran:
            if a < b:  # not_in_parallel holds across worker processes
                x, y = spans[a], spans[b]
                assert x["end"] <= y["start"] or y["end"] <= x["start"], (a, b)
    for a in (f"m{i}" for i in alone if f"m{i}" in spans):  # not_in_parallel=True: alone
        x = spans[a]
        for b, y in spans.items():
            assert b == a or x["end"] <= y["start"] or y["end"] <= x["start"], (a, b, out)
    assert (1 in codes) == bool(failing)


def _chain_file(tmp_path: Path, n: int = 4, sleep: float = 0.3) -> Path:
    file = tmp_path / "ciflow.py"
    write_pipeline(file, [[i - 1] if i else [] for i in range(n)], set(), set())
    file.write_text(file.read_text().replace("time.sleep(0.05)", f"time.sleep({sleep})"))
    return file


@pytest.mark.parametrize("point", ["after-claim", "before-result", "after-outputs"])
def test_killed_worker_is_taken_over(
    tmp_path: Path, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = _chain_file(tmp_path)
    plan = plan_pipeline(load_pipeline(file), [RunnerPool(count=2, os=None)])
    owner = plan.slot_of("m1")
    assert owner is not None
    result, codes, _, out = distributed_run(
        tmp_path, file, 2, extra=["--no-steal"], env_of={owner: {"CIFLOW_FAILPOINT": f"{point}:m1"}}
    )
    outcomes = {r.name: r.outcome for r in result.records}
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}, out
    assert {r.name: r.result for r in result.records} == {
        "m0": b"1",
        "m1": b"2",
        "m2": b"3",
        "m3": b"4",
    }
    m1 = next(r for r in result.records if r.name == "m1")
    assert m1.attempts == 2 and m1.slot == 1 - owner  # taken over by the survivor
    assert "taking over m1" in out
    assert codes[owner] == -signal.SIGKILL and codes[1 - owner] == 0


def _run_plan(
    tmp_path: Path,
    file: Path,
    slots: list[list[str]],
    extra: list[str],
    env_of: dict[int, dict[str, str]] | None = None,
) -> Any:
    """Publish a plan with ``slots`` (module names per slot, in order), run, read back."""
    store_dir = tmp_path / "store"
    store = open_store(f"file://{store_dir}")
    keys = RunKeys("test-run")
    pipeline = load_pipeline(file)
    plan = plan_pipeline(pipeline, [RunnerPool(count=len(slots), os=None)])
    entries = {m.name: m for s in plan.slots for m in s.modules}
    for slot, names in zip(plan.slots, slots, strict=True):
        slot.modules = [entries[n] for n in names]
    publish_plan(store, keys, plan)
    out = io.StringIO()
    procs = start_workers(
        len(slots), pipeline_file=file, store_url=f"file://{store_dir}", run_id="test-run",
        extra=["--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5", *extra],
        env_of=env_of,
    )  # fmt: skip
    codes = supervise(procs, Console(out, live=False))
    return read_run(store, keys, pipeline.order), codes, store_dir, out.getvalue()


@pytest.mark.parametrize("steal", [True, False])
def test_idle_worker_asks_and_busy_slot_hands_a_module_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steal: bool
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = tmp_path / "ciflow.py"
    write_pipeline(file, [[], [], []], set(), set())
    file.write_text(file.read_text().replace("time.sleep(0.05)", "time.sleep(1.5)"))
    # slot 0 has all three (1.5 s each, all ready at once), slot 1 nothing: one job per worker
    result, codes, store_dir, out = _run_plan(
        tmp_path,
        file,
        [["m0", "m1", "m2"], []],
        ["--jobs", "1"] + ([] if steal else ["--no-steal"]),
    )
    assert codes == [0, 0], out
    by_name = {r.name: r for r in result.records}
    assert {r.outcome for r in result.records} == {Outcome.SUCCEEDED}
    assert all(r.attempts == 1 for r in result.records)
    run = store_dir / "runs" / "test-run"
    claim_file = run / "claims" / "m1" / "0001"
    if not steal:
        assert {r.slot for r in result.records} == {0}
        assert not (run / "claims").exists() and not (run / "requests").exists()
        return
    assert by_name["m1"].slot == 1, out  # slot 1 asked for it while slot 0 ran m0
    assert by_name["m0"].slot == 0 and by_name["m2"].slot == 0
    claim = json.loads(claim_file.read_text())
    assert claim["worker"] == by_name["m1"].worker and claim["granted_by"] == by_name["m0"].worker
    assert "m1 handed to" in out
    spans = read_log(tmp_path / "log.jsonl")
    assert spans["m1"]["start"] < spans["m0"]["end"]  # ran side by side, not after m0
    # nothing else was claimed: attempt 1 of the rest belonged to the plan
    assert sorted(p.name for p in (run / "claims").iterdir()) == ["m1"]


def test_module_handed_to_a_worker_that_dies_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = tmp_path / "ciflow.py"
    write_pipeline(file, [[], [], []], set(), set())
    text = file.read_text().replace("time.sleep(0.05)", "time.sleep(1.5)")
    seen = '    mark("m1", "start")\n    mark("m1", f"ctx.attempt={ctx.attempt}")'
    file.write_text(text.replace('    mark("m1", "start")', seen))
    # slot 1 asks for m1, is handed it, and dies right after: slot 0 takes it over
    result, codes, store_dir, out = _run_plan(
        tmp_path, file, [["m0", "m1", "m2"], []], ["--jobs", "1"],
        env_of={1: {"CIFLOW_FAILPOINT": "after-claim:m1"}},
    )  # fmt: skip
    assert codes == [0, -signal.SIGKILL], out
    assert "m1 handed to s1-" in out
    by_name = {r.name: r for r in result.records}
    assert {r.outcome for r in result.records} == {Outcome.SUCCEEDED}
    assert by_name["m1"].attempts == 2 and by_name["m1"].slot == 0
    assert "taking over m1 from s1-" in out
    marks = [json.loads(x)[1] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "ctx.attempt=2" in marks  # the module itself sees the attempt the summary shows
    run = store_dir / "runs" / "test-run" / "claims" / "m1"
    assert sorted(p.name for p in run.iterdir()) == ["0001", "0002"]


@pytest.mark.parametrize("when", [0.0, 1.6])  # before it claims anything; mid-module
def test_sigkill_with_dry_run_kill_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: float
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = _chain_file(tmp_path, n=3, sleep=1.0)
    from ciflow.distributed.dryrun import Kill

    result, codes, _, out = distributed_run(tmp_path, file, 2, kills=[Kill(0, when)])
    assert {r.outcome for r in result.records} == {Outcome.SUCCEEDED}, out
    assert [r.result for r in result.records] == [b"1", b"2", b"3"]
    assert codes[0] == -signal.SIGKILL and codes[1] == 0
    if when == 0.0:
        assert {r.slot for r in result.records} == {1}


def test_fail_fast_across_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = tmp_path / "ciflow.py"
    write_pipeline(file, [[], [], [1], [2], [3]], {0}, set())
    text = file.read_text().replace("time.sleep(0.05)", "time.sleep(0.5)")
    file.write_text(text)
    result, codes, store_dir, out = distributed_run(tmp_path, file, 2)
    outcomes = {r.name: r.outcome for r in result.records}
    assert outcomes["m0"] is Outcome.FAILED
    assert Outcome.CANCELLED in outcomes.values(), outcomes
    assert (store_dir / "runs" / "test-run" / "cancel").exists()
    assert 1 in codes
    assert all(o is not None for o in outcomes.values())


def test_workers_first_then_plan_waits_for_them(tmp_path: Path, pipelines: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    file = pipelines / "distributed.py"
    procs = start_workers(2, pipeline_file=file, store_url=url, run_id="late-plan", extra=FAST)
    try:
        result = runner.invoke(
            app,
            [
                "plan",
                "-f",
                str(file),
                "--store",
                url,
                "--run-id",
                "late-plan",
                "--wait-for-workers",
                "2",
                "--register-timeout",
                "60",
            ],
        )
        assert result.exit_code == 0, result.stderr
        codes = supervise(procs, Console(io.StringIO(), live=False))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert codes == [0, 0]
    summary = runner.invoke(app, ["summary", "--store", url, "--run-id", "late-plan"])
    assert summary.exit_code == 0
    assert "OK: 5 module(s): 5 succeeded" in summary.stdout
    status = runner.invoke(app, ["status", "--store", url, "--run-id", "late-plan"])
    assert "modules: 5 succeeded" in status.stdout
    assert status.stdout.count("finished (exit 0)") == 2


def test_dry_run_command_with_report(tmp_path: Path, pipelines: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ciflow",
            "dry-run",
            "--workers",
            "2",
            "-f",
            str(pipelines / "distributed.py"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 5 module(s): 5 succeeded" in proc.stdout
    data = json.loads(report.read_text())
    assert {m["name"]: m["result"] for m in data["modules"]}["report"] == 5
    assert {m["slot"] for m in data["modules"]} <= {0, 1}


def test_worker_that_cannot_serve_its_slot_says_so_at_once(tmp_path: Path, pipelines: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    keys = RunKeys("caps")
    pipeline = load_pipeline(pipelines / "unmet_requirement.py")
    plan = plan_pipeline(pipeline, [RunnerPool(count=1, tools=None)])
    publish_plan(store, keys, plan)
    result = runner.invoke(
        app,
        [
            "worker",
            "--slot",
            "0",
            "-f",
            str(pipelines / "unmet_requirement.py"),
            "--store",
            url,
            "--run-id",
            "caps",
            *FAST,
        ],
    )
    assert result.exit_code == 2
    assert "slot 0 cannot serve the modules planned for it: 'needs_tool' needs tool" in (
        result.stderr
    )


def test_corrupted_result_is_reported(tmp_path: Path, pipelines: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ciflow",
            "dry-run",
            "-w",
            "1",
            "-f",
            str(pipelines / "basic.py"),
            "--store",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = next((tmp_path / "store" / "runs").iterdir()).name
    blob = tmp_path / "store" / "runs" / run_id / "results" / "build"
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = tmp_path / "report.json"
    result = runner.invoke(
        app, ["summary", "--store", url, "--run-id", run_id, "--report", str(report)]
    )
    assert result.exit_code == 1  # the summary goes on: build failed, the others are shown
    assert result.stderr.startswith("ciflow: warning: module 'build': its result record is ")
    assert "corrupted" in result.stderr and "results/build" in result.stderr
    assert "build (failed): its result record is corrupted: " in result.stdout
    assert "FAILED: 3 module(s): 2 succeeded, 1 failed in " in result.stdout
    data = json.loads(report.read_text())
    modules = {m["name"]: m for m in data["modules"]}
    assert data["exit_code"] == 1 and modules["build"]["outcome"] == "failed"
    assert modules["test"]["outcome"] == modules["lint"]["outcome"] == "succeeded"


def test_unwritable_store_is_a_clear_error(tmp_path: Path, pipelines: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(
        app,
        [
            "worker",
            "--slot",
            "0",
            "-f",
            str(pipelines / "basic.py"),
            "--store",
            f"file://{blocker}/store",
            "--run-id",
            "x",
        ],
    )
    assert result.exit_code != 0 and result.stderr.startswith("ciflow: error: ")
    assert "Traceback" not in result.stdout + result.stderr


def test_future_message_version_is_refused(tmp_path: Path) -> None:
    reg = Registration(
        worker="w",
        slot=0,
        host="h",
        pid=1,
        os="linux",
        arch="x86_64",
        tools=[],
        tags=[],
        max_parallel=1,
        registered_at=0.0,
    )
    data = json.loads(encode(reg))
    data["schema_version"] = 99
    with pytest.raises(StoreError, match="schema version 99, newer than this ciflow"):
        decode(Registration, json.dumps(data).encode(), key="runs/x/workers/w")


def test_sigterm_drains_and_deregisters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = _chain_file(tmp_path, n=2, sleep=1.0)
    url = f"file://{tmp_path / 'store'}"
    store = open_store(url)
    keys = RunKeys("drain")
    publish_plan(store, keys, plan_pipeline(load_pipeline(file), [RunnerPool(count=1)]))
    proc = start_workers(1, pipeline_file=file, store_url=url, run_id="drain", extra=FAST)[0]
    deadline = time.monotonic() + 30
    while not (tmp_path / "log.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    result = read_run(store, keys, ["m0", "m1"])
    assert result.records[0].outcome is Outcome.SUCCEEDED, out  # finished, not killed
    assert result.records[1].outcome is None  # not started: handed back
    assert store.list(keys.done)  # deregistered


def test_sigterm_ends_at_once_a_worker_that_only_waits_for_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = _chain_file(tmp_path, n=2, sleep=60.0)
    url = f"file://{tmp_path / 'store'}"
    store, keys = open_store(url), RunKeys("idle")
    publish_plan(store, keys, plan_pipeline(load_pipeline(file), [RunnerPool(count=2, os=None)]))
    procs = start_workers(2, pipeline_file=file, store_url=url, run_id="idle", extra=FAST)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "log.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "log.jsonl").exists(), "m0 never started"
        busy = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])[3]
        idle = next(p for p in procs if p.pid != busy)
        idle.send_signal(signal.SIGTERM)
        out, _ = idle.communicate(timeout=10)  # m0 still has 60 s to go
        assert "Traceback" not in out
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()


def test_worker_takes_its_slot_from_gitlab(
    tmp_path: Path, pipelines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"file://{tmp_path / 'store'}"
    file = pipelines / "basic.py"
    publish_plan(
        open_store(url),
        RunKeys("gl"),
        plan_pipeline(load_pipeline(file), [RunnerPool(count=1, os=None)]),
    )
    result = runner.invoke(
        app,
        ["worker", "-f", str(file), "--store", url, *FAST],
        env={"GITLAB_CI": "true", "CI_NODE_INDEX": "1", "CI_PIPELINE_ID": "gl"},
    )
    assert result.exit_code == 0, result.stderr
    assert "registered as s0-" in result.stdout
    result = runner.invoke(
        app, ["worker", "-f", str(file), "--store", url, "--run-id", "gl"], env={"GITLAB_CI": ""}
    )
    assert result.exit_code == 2 and "no slot: pass --slot K" in result.stderr


def test_two_workers_for_one_slot_are_warned_and_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = _chain_file(tmp_path, n=4, sleep=0.4)
    store_dir = tmp_path / "store"
    url = f"file://{store_dir}"
    keys = RunKeys("test-run")
    pipeline = load_pipeline(file)
    publish_plan(open_store(url), keys, plan_pipeline(pipeline, [RunnerPool(count=2, os=None)]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFLOW_STORE": url}
    cmd = [sys.executable, "-P", "-m", "ciflow", "worker", "--run-id", "test-run", "-f", str(file)]
    procs = [  # slot 0 twice
        subprocess.Popen(
            [*cmd, *FAST, "--slot", str(slot)],
            stdout=subprocess.PIPE,
            text=True,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        for slot in (0, 0, 1)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    warned = [o for o in outs[:2] if "warning: slot 0 is also served by s0-" in o]
    assert warned, outs
    result = read_run(open_store(url), keys, pipeline.order)
    assert [r.result for r in result.records] == [b"1", b"2", b"3", b"4"]
    assert {r.outcome for r in result.records} == {Outcome.SUCCEEDED}


TRANSITIVE = """
from pathlib import Path
import ciflow


@ciflow.module(outputs=["out/a.txt"], cost=1)
def make(ctx) -> None:
    Path("out").mkdir(exist_ok=True)
    Path("out/a.txt").write_text("from make")


@ciflow.module(depends_on=[make], cost=1)
def middle(ctx) -> int:
    return len(Path("out/a.txt").read_text())


@ciflow.module(depends_on=[middle], cost=1)
def use(ctx, middle: int) -> str:
    return Path("out/a.txt").read_text() + f" ({middle})"
"""


def test_outputs_of_the_whole_upstream_are_restored(tmp_path: Path) -> None:
    """``use`` reads a file of ``make``, two steps up, on a worker that ran neither."""
    from ciflow.distributed.dryrun import copy_workspaces

    src = tmp_path / "src"
    src.mkdir()
    (src / "ciflow.py").write_text(TRANSITIVE)
    spaces = copy_workspaces(src, tmp_path / "ws", 2)
    store_dir = tmp_path / "store"
    store = open_store(f"file://{store_dir}")
    keys = RunKeys("test-run")
    pipeline = load_pipeline(spaces[0] / "ciflow.py")
    plan = plan_pipeline(pipeline, [RunnerPool(count=2, os=None)])
    entries = {m.name: m for s in plan.slots for m in s.modules}
    plan.slots[0].modules = [entries["make"], entries["middle"]]
    plan.slots[1].modules = [entries["use"]]
    publish_plan(store, keys, plan)
    out = io.StringIO()
    procs = start_workers(
        2, pipeline_file=Path("ciflow.py"), store_url=f"file://{store_dir}", run_id="test-run",
        extra=[*FAST, "--no-steal"], workspaces=spaces,
    )  # fmt: skip
    codes = supervise(procs, Console(out, live=False))
    assert codes == [0, 0], out.getvalue()
    result = read_run(store, keys, pipeline.order)
    assert {r.name: r.result for r in result.records}["use"] == b'"from make (9)"'
    lines = out.getvalue().splitlines()
    assert any(x.startswith("w1 | ") and "restored 1 output file(s) of make" in x for x in lines)
    assert not any(x.startswith("w0 | ") and "restored" in x for x in lines)  # its own files
    assert (spaces[1] / "out" / "a.txt").read_text() == "from make"


def test_a_module_that_runs_alone_has_the_whole_run_to_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """not_in_parallel=True across workers: the others finish what runs, then wait."""
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(tmp_path / "log.jsonl"))
    file = tmp_path / "ciflow.py"
    write_pipeline(file, [[], [], [], [], [3]], set(), set(), alone={3})
    file.write_text(file.read_text().replace("time.sleep(0.05)", "time.sleep(0.8)"))
    # m3 runs alone on slot 2 while slots 0 and 1 have work that is ready at once
    result, codes, _, out = _run_plan(
        tmp_path, file, [["m0", "m4"], ["m1"], ["m3", "m2"]], ["--jobs", "1", "--no-steal"]
    )
    assert codes == [0, 0, 0], out
    assert {r.outcome for r in result.records} == {Outcome.SUCCEEDED}
    spans = read_log(tmp_path / "log.jsonl")
    solo = spans["m3"]
    for name, span in spans.items():
        if name != "m3":
            assert span["end"] <= solo["start"] or solo["end"] <= span["start"], (name, out)
    assert "quiet while m3 runs alone" in out


STRESS_MODULE = """

@ciflow.module(name="m{i}", depends_on={deps!r})
def m{i}() -> None:
    mark("m{i}", "start")
"""


@pytest.mark.parametrize("workers", [2, 8, 16])
def test_large_pipelines_on_many_workers_end_with_every_worker_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    # the old worker read sets that its pool threads changed (a race): every run this size
    # lost workers; now one thread owns what a worker knows
    log = tmp_path / "log.jsonl"
    monkeypatch.setenv("CIFLOW_TEST_LOG", str(log))
    width, layers = 20, 100  # 2,000 modules, the size at which the old worker always raced
    text = TEMPLATE
    for i in range(width * layers):
        layer = i // width
        deps = (
            [] if layer == 0 else [f"m{(layer - 1) * width + (i * 7 + k) % width}" for k in (0, 5)]
        )
        text += STRESS_MODULE.format(i=i, deps=sorted(set(deps)))
    file = tmp_path / "stress.py"
    file.write_text(text)
    # generous liveness: a worker starved of CPU by 15 others must not be taken for dead here
    extra = ["--jobs", "1", "--heartbeat-timeout", "10"]
    run, codes, _, out = distributed_run(tmp_path, file, workers, extra=extra)
    assert codes == [0] * workers, out[-3000:]
    assert {r.outcome for r in run.records} == {Outcome.SUCCEEDED}
    starts = [json.loads(line)[0] for line in log.read_text().splitlines()]
    assert sorted(starts) == sorted(f"m{i}" for i in range(width * layers))  # each ran once
    assert "Traceback" not in out


def test_a_module_that_kills_its_worker_fails_after_two_deaths_and_the_rest_go_on(
    tmp_path: Path,
) -> None:
    file = tmp_path / "ciflow.py"
    file.write_text(
        "import os, time\nimport ciflow\n\n\n"
        "@ciflow.module()\ndef boom() -> None:\n    os._exit(5)  # a segfault, the OOM killer\n\n\n"
        "@ciflow.module()\ndef fine() -> int:\n    time.sleep(0.2)\n    return 1\n"
    )
    result, codes, _, out = _run_plan(
        tmp_path, file, [["boom"], ["fine"], []], ["--keep-going", "--no-steal"]
    )
    outcomes = {r.name: r for r in result.records}
    assert outcomes["fine"].outcome is Outcome.SUCCEEDED
    assert outcomes["boom"].outcome is Outcome.FAILED, out
    assert outcomes["boom"].error == "its worker died while running it 2 times"
    assert sorted(codes).count(5) == 2  # two workers died running it; nobody else did
    assert 1 in codes  # the worker that failed it reports the failure


def test_a_module_whose_only_capable_worker_was_killed_fails_after_the_serve_timeout(
    tmp_path: Path, pipelines: Path
) -> None:
    file, store = pipelines / "tag_holder.py", tmp_path / "store"
    pools = [RunnerPool(count=1, os=None, tags=("gpu",)), RunnerPool(count=1, os=None)]
    plan = plan_pipeline(load_pipeline(file), pools)
    entries = {m.name: m for s in plan.slots for m in s.modules}
    plan.slots[0].modules, plan.slots[1].modules = [entries["train"]], [entries["first"]]
    publish_plan(open_store(f"file://{store}"), RunKeys("tags"), plan)
    common = ["-f", str(file), "--store", f"file://{store}", "--run-id", "tags", "--no-steal",
              "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1.5"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-m", "ciflow", "worker", "--slot", str(slot), *common, *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for slot, extra in ((0, ["--tag", "gpu"]), (1, ["--serve-timeout", "2"]))
    ]
    assert procs[0].stdout is not None and "registered as" in procs[0].stdout.readline()
    procs[0].kill()  # the only gpu worker, while it waits for `first`
    out, _ = procs[1].communicate(timeout=60)  # not forever
    procs[0].communicate()
    assert procs[1].returncode == ExitCode.FAILED, out
    run = read_run(open_store(f"file://{store}"), RunKeys("tags"), ["first", "train"])
    outcomes = {r.name: (r.outcome, r.error) for r in run.records}
    assert outcomes["first"] == (Outcome.SUCCEEDED, None)
    assert outcomes["train"][0] is Outcome.FAILED
    assert "no live worker can serve it" in str(outcomes["train"][1]), out
    assert "Traceback" not in out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_ends_a_worker_waiting_for_its_plan_at_once(
    tmp_path: Path, pipelines: Path, sig: signal.Signals
) -> None:
    file = pipelines / "basic.py"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow", "worker", "--slot", "0", "-f", str(file),
         "--store", f"file://{tmp_path / 'store'}", "--run-id", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert "registered as" in proc.stdout.readline()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=10)  # not --plan-timeout (600 s)
    assert proc.returncode == 130, out
    assert "stopped while waiting for the plan" in out and "Traceback" not in out


@pytest.mark.parametrize(
    "signals", [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM,)], ids=["github", "kubernetes"]
)
def test_a_signal_while_registering_on_a_slow_store_ends_the_worker_at_once(
    pipelines: Path, signals: tuple[signal.Signals, ...]
) -> None:
    """Every store call takes 3 s: a cancelled job must not finish registering first (GitHub
    sends SIGINT then SIGTERM, Kubernetes SIGTERM)."""
    from ciflow.testing.emulator import Faults, GitHubEmulator

    with GitHubEmulator("127.0.0.1", 0) as emu:
        emu.faults = Faults(latency=3.0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ciflow", "worker", "--slot", "0", "-f",
             str(pipelines / "basic.py"), "--store", "github://", "--run-id", "slow"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **emu.env("41", "work-0")},
        )  # fmt: skip
        deadline = time.monotonic() + 30  # a loaded machine starts Python slowly
        while not sum(emu.calls.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(emu.calls.values()), "the worker never called the store"
        time.sleep(0.3)  # inside its first store call (each takes 3 s)
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=10)  # registering alone takes longer than this
    assert proc.returncode == 130, out
    assert "stopped while registering" in out and "Traceback" not in out


def test_an_archive_that_cannot_be_restored_fails_the_dependent_not_the_worker(
    tmp_path: Path,
) -> None:
    from ciflow.distributed.dryrun import copy_workspaces

    pipe = tmp_path / "pipe"
    pipe.mkdir()
    file = pipe / "ciflow.py"
    file.write_text(
        "import time\nimport ciflow\n\n\n"
        "@ciflow.module(outputs=['out/*'])\ndef make(ctx: ciflow.Context) -> None:\n"
        "    (ctx.workdir / 'out').mkdir()\n"
        "    (ctx.workdir / 'out' / 'a.txt').write_text('a')\n\n\n"
        "@ciflow.module()\ndef gate() -> None:\n    time.sleep(2.0)\n\n\n"
        "@ciflow.module(depends_on=[make, gate])\ndef use() -> None:\n    pass\n"
    )
    store_dir = tmp_path / "store"
    store = open_store(f"file://{store_dir}")
    keys = RunKeys("test-run")
    pipeline = load_pipeline(file)
    plan = plan_pipeline(pipeline, [RunnerPool(count=2, os=None)])
    entries = {m.name: m for s in plan.slots for m in s.modules}
    plan.slots[0].modules = [entries["make"], entries["gate"]]
    plan.slots[1].modules = [entries["use"]]
    publish_plan(store, keys, plan)
    procs = start_workers(
        2, pipeline_file=file, store_url=f"file://{store_dir}", run_id="test-run",
        extra=["--no-steal", "--keep-going", *FAST],
        workspaces=copy_workspaces(pipe, tmp_path / "spaces", 2),
    )  # fmt: skip
    result = store_dir / "runs" / "test-run" / "results" / "make"
    deadline = time.monotonic() + 30
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for archive in (store_dir / "runs" / "test-run" / "outputs" / "make").iterdir():
        archive.write_bytes(b"not a zstd archive")  # while gate still runs
    codes = supervise(procs, Console(io.StringIO(), live=False))
    records = {r.name: r for r in read_run(store, keys, pipeline.order).records}
    assert records["gate"].outcome is Outcome.SUCCEEDED
    assert records["use"].outcome is Outcome.FAILED
    assert "cannot prepare its inputs" in (records["use"].error or "")
    assert codes == [1, 1]  # the worker lived to report it, and both say the run failed


def test_a_worker_whose_slot_was_given_up_runs_its_modules_through_claims(
    tmp_path: Path, pipelines: Path
) -> None:
    from ciflow.distributed.messages import SlotRecord

    file = pipelines / "basic.py"
    url = f"file://{tmp_path / 'store'}"
    store, keys = open_store(url), RunKeys("late")
    plan = plan_pipeline(load_pipeline(file), [RunnerPool(count=1, os=None)])
    publish_plan(store, keys, plan)
    store.create(keys.slot(0), encode(SlotRecord(slot=0, worker="s1-other-1", given_up=True)))
    result = runner.invoke(app, ["worker", "--slot", "0", "-f", str(file), "--store", url,
                                 "--run-id", "late", *FAST])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "slot 0 was given up for lost by s1-other-1" in result.output
    names = load_pipeline(file).order
    assert all(store.get(keys.claim(n, 2)) is not None for n in names)  # claimed, not assumed
    assert all(r.outcome is Outcome.SUCCEEDED for r in read_run(store, keys, names).records)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("retries=0", "retries=3"), "retries"),
        (('depends_on=["a"]', "depends_on=[]"), "depends_on"),
    ],
)
def test_a_worker_refuses_a_pipeline_edited_since_the_plan(
    tmp_path: Path, edit: tuple[str, str], field: str
) -> None:
    text = """
import ciflow

@ciflow.module(name="a")
def a(ctx) -> int:
    return 1

@ciflow.module(name="b", depends_on=["a"], retries=0)
def b(ctx) -> int:
    return 2
"""
    file = tmp_path / "ciflow.py"
    file.write_text(text)
    url = f"file://{tmp_path / 'store'}"
    plan = runner.invoke(
        app, ["plan", "-f", str(file), "--store", url, "--run-id", "edited", "--workers", "1"]
    )
    assert plan.exit_code == 0, plan.stderr
    file.write_text(text.replace(*edit))
    proc = subprocess.run(
        [sys.executable, "-m", "ciflow", "worker", "-f", str(file), "--store", url,
         "--run-id", "edited", "--slot", "0", *FAST],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    line = f"module 'b' differs from the plan: its {field} changed since `ciflow plan` ran"
    assert line in proc.stderr
    assert "Traceback" not in proc.stderr
