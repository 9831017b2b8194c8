"""The whole GitHub flow under every guess about GitHub's artifact service that is not documented.

For each combination of the emulator's `unfinalized_reserves_name`, `unfinalized_deletable`,
`unfinalized_listed` and `list_limit` (None, or the newest `LIST_LIMIT` artifacts only), a plan
job and 3 worker jobs run a small pipeline over ``github://``; the worker of one module is
SIGKILLed after uploading that module's result and before finalizing it (its artifact stays
unfinalized), so another worker takes the module over and writes the result itself, and 4 more
jobs race to create one key. Every module's result must be there and right, every key must hold
exactly one finalized artifact, and exactly one racer may win (docs/architecture.md, "The github
store and GitHub's artifact service").
"""

from __future__ import annotations

import io
import itertools
import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ciflow.cli.app import app
from ciflow.distributed.blob import decode_result
from ciflow.distributed.dryrun import start_workers, supervise
from ciflow.distributed.keys import RunKeys
from ciflow.execution.engine import Engine
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import load_pipeline
from ciflow.planning.planner import RunnerPool, plan_pipeline
from ciflow.stores.github.artifacts import GitHubArtifactStore
from ciflow.stores.github.naming import artifact_name, key_from_name
from ciflow.testing.emulator import GitHubEmulator
from ciflow.ui.console import Console

runner = CliRunner()
PIPELINE = Path(__file__).parent / "pipelines" / "assumptions.py"
WORKERS = 3
#: a name held by a writer that died is given up after this long (the store URL's option)
STORE = "github://?stale_after=1.5"
FAST = ["--heartbeat-interval", "0.3", "--heartbeat-timeout", "2", "--jobs", "1", "--poll", "0.2"]
KILLED = "left"  # its worker dies between uploading its result and finalizing it
#: a listing of the newest 16 artifacts: fewer than the run makes (the test adds `FILLER`
#: keys, so that the final reads see a part of it for sure), while a worker joining sees every
#: registration and probe in its first listing (the plan it looks up by name). A smaller
#: window hides records that no client could list at all (ListArtifacts cannot page): see
#: docs/architecture.md, "The github store and GitHub's artifact service"
LIST_LIMIT = 16
FILLER = 12
#: seconds the worker jobs may take before the test stops them (and fails)
DEADLINE = 90.0
_runs = itertools.count()

COMBINATIONS = [
    pytest.param(reserves, deletable, listed, limit, id=f"reserves={reserves}-deletable="
                 f"{deletable}-listed={listed}-limit={limit}")
    for reserves, deletable, listed, limit in itertools.product(
        [True, False], [True, False], [False, True], [None, LIST_LIMIT]
    )
]  # fmt: skip


@pytest.fixture(scope="module")
def expected() -> dict[str, tuple[Outcome | None, bytes | None]]:
    """What a local run of the pipeline gives each module."""
    run = Engine(
        load_pipeline(PIPELINE), console=Console(io.StringIO(), live=False),
        handle_signals=False, keep_going=True,
    ).run()  # fmt: skip
    return {r.name: (r.outcome, r.result) for r in run.records}


@pytest.fixture
def emu(emulator: GitHubEmulator) -> GitHubEmulator:
    emulator.default_behaviours()
    emulator.jobs_api = True
    return emulator


def _run_flow(emu: GitHubEmulator, run: str, run_id: str, tmp_path: Path) -> tuple[list[int], str]:
    """The plan job, then the worker jobs (one killed mid-upload), as a workflow runs them."""
    output = tmp_path / "github_output"
    plan = runner.invoke(
        app,
        ["plan", "-f", str(PIPELINE), "--workers", str(WORKERS), "--store", STORE,
         "--run-id", run_id],
        env={**emu.env(run, "plan"), "GITHUB_OUTPUT": str(output)},
    )  # fmt: skip
    assert plan.exit_code == 0, plan.stdout + plan.stderr
    owner = plan_pipeline(load_pipeline(PIPELINE), [RunnerPool(count=WORKERS)]).slot_of(KILLED)
    assert owner is not None
    failpoint = {"CIFLOW_FAILPOINT": f"before-finalize:/results/{KILLED}"}
    budget = {"CIFLOW_JOBS_API_BUDGET": "1000000"}  # a death is seen within a second or two
    envs = {
        k: {**emu.env(run, f"work-{k}"), **budget, **(failpoint if k == owner else {})}
        for k in range(WORKERS)
    }
    procs = start_workers(
        WORKERS, pipeline_file=PIPELINE, store_url=STORE, run_id=run_id, extra=FAST, env_of=envs
    )
    out = io.StringIO()
    watchdog = threading.Timer(DEADLINE, lambda: [p.kill() for p in procs])
    watchdog.start()
    try:
        codes = supervise(
            procs, Console(out, live=False), (),
            on_exit=lambda slot, code: emu.finish_job(
                run, f"work-{slot}", "success" if code == 0 else "failure"
            ),
        )  # fmt: skip
    finally:
        watchdog.cancel()
    assert codes[owner] == -signal.SIGKILL, out.getvalue()
    assert [c for k, c in enumerate(codes) if k != owner] == [0] * (WORKERS - 1), out.getvalue()
    return codes, out.getvalue()


def _race(emu: GitHubEmulator, run: str, key: str, racers: int = 4) -> list[bool]:
    """``racers`` jobs create ``key`` at once; the value each reads back."""
    stores = [GitHubArtifactStore(STORE, env=emu.env(run, f"racer-{i}")) for i in range(racers)]
    barrier = threading.Barrier(racers)

    def go(i: int) -> bool:
        barrier.wait(timeout=30)
        return stores[i].create(key, f"racer {i}".encode())

    try:
        with ThreadPoolExecutor(racers) as pool:
            won = list(pool.map(go, range(racers)))
        values = {s.get(key) for s in stores}
        assert len(values) == 1 and values != {None}, values
        if True in won:
            assert values == {f"racer {won.index(True)}".encode()}
        return won
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize(("reserves", "deletable", "listed", "limit"), COMBINATIONS)
def test_the_github_flow_is_right_whatever_the_service_does(
    emu: GitHubEmulator,
    expected: dict[str, tuple[Outcome | None, bytes | None]],
    tmp_path: Path,
    reserves: bool,
    deletable: bool,
    listed: bool,
    limit: int | None,
) -> None:
    emu.unfinalized_reserves_name, emu.unfinalized_deletable = reserves, deletable
    emu.unfinalized_listed, emu.list_limit = listed, limit
    run = f"assume-{next(_runs)}"
    run_id = f"{run}-1"
    codes, out = _run_flow(emu, run, run_id, tmp_path)
    keys = RunKeys(run_id)
    reader = GitHubArtifactStore(STORE, env=emu.env(run, "summary"))
    filler = GitHubArtifactStore(STORE, env=emu.env(run, "filler"))
    for i in range(FILLER):  # the run outgrows the listing, if it has not yet
        assert filler.create(f"{keys.root}filler/{i}", b"x", sole=True)
    filler.close()
    try:
        got = {}
        for module in expected:  # looked up by name: a listing may be a part of the run
            data = reader.get(keys.result(module))
            assert data is not None, (module, out)
            header, payload = decode_result(data, key=keys.result(module))
            got[module] = (Outcome(header.outcome), payload or None)
            if module == KILLED:
                assert header.attempt == 2, out  # taken over after its worker died
        assert got == expected, out
        assert _race(emu, run, keys.result("first")) == [False] * 4  # taken: nobody wins
        assert _race(emu, run, f"{keys.root}race").count(True) == 1
        listed = reader.list("")
    finally:
        reader.close()
    artifacts = emu.artifacts(run)
    if limit is not None:  # the listing was a part of the run indeed
        assert len(listed) <= limit < sum(a["finalized"] for a in artifacts)
    finalized = [a["name"] for a in artifacts if a["finalized"]]
    by_key = [key_from_name(name, "ciflow~") for name in finalized]
    assert len(by_key) == len(set(by_key)), json.dumps(finalized)  # one value per key
    killed = artifact_name(keys.result(KILLED))
    assert {"name": killed, "finalized": False} in [
        {"name": a["name"], "finalized": a["finalized"]} for a in artifacts
    ]  # the writer that died left its upload unfinalized
    where = killed + "!1" if reserves else killed  # a held name: the next generation
    assert where in finalized, json.dumps(finalized)
