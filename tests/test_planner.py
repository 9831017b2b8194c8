from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import ciflow
from ciflow.cli.app import app
from ciflow.errors import RequirementError, UsageError
from ciflow.model.module import Module
from ciflow.model.pipeline import Pipeline, load_pipeline
from ciflow.planning.costs import Transfer
from ciflow.planning.history import History, ModuleHistory
from ciflow.planning.plan import DistributedExecutionPlan
from ciflow.planning.planner import plan_pipeline
from ciflow.planning.pools import RunnerPool, load_pools, parse_pool
from ciflow.stores.registry import BACKENDS

runner = CliRunner()
POOLS = [
    RunnerPool(count=3, runs_on="ubuntu-latest", os="linux", tools=("docker",)),
    RunnerPool(count=1, runs_on="windows-latest", os="windows", tools=()),
]


def spans(plan: DistributedExecutionPlan) -> dict[str, tuple[int, float, float]]:
    return {m.name: (s.slot, m.start, m.finish) for s in plan.slots for m in s.modules}


def test_plan_respects_capabilities_keys_limits_and_dependencies(pipelines: Path) -> None:
    pipeline = load_pipeline(pipelines / "planned.py")
    plan = plan_pipeline(pipeline, POOLS)
    at = spans(plan)
    assert set(at) == set(pipeline.modules)
    assert at["build_windows"][0] == 3  # the only windows slot
    assert at["docker_image"][0] in (0, 1, 2)  # windows has no docker
    a, b = at["integration"], at["migrations"]
    assert a[2] <= b[1] or b[2] <= a[1]  # not_in_parallel across slots
    u, v = at["ui_a"], at["ui_b"]
    assert u[2] <= v[1] or v[2] <= u[1]  # limit of 1 across slots
    for name, mod in pipeline.modules.items():
        for dep in mod.depends_on:
            assert at[dep.name][2] <= at[name][1]
    assert plan.makespan >= plan.lower_bound > 0
    assert plan.ratio == pytest.approx(plan.makespan / plan.lower_bound, abs=1e-6)
    assert plan.matrix() == {
        "include": [
            {"slot": 0, "runs-on": "ubuntu-latest"},
            {"slot": 1, "runs-on": "ubuntu-latest"},
            {"slot": 2, "runs-on": "ubuntu-latest"},
            {"slot": 3, "runs-on": "windows-latest"},
        ]
    }


def test_plan_is_byte_identical_for_the_same_inputs(pipelines: Path) -> None:
    first = plan_pipeline(load_pipeline(pipelines / "planned.py"), POOLS).to_json()
    second = plan_pipeline(load_pipeline(pipelines / "planned.py"), POOLS).to_json()
    assert first == second
    data = json.loads(first)
    assert data["schema_version"] == 1
    assert {"makespan", "lower_bound", "ratio", "slots", "inputs"} <= set(data)
    assert set(data["slots"][0]["modules"][0]) == {"name", "start", "finish"}
    assert data["inputs"]["modules"]["build"] == {
        "seconds": 4.0,
        "source": "hint",
        "result_bytes": 0,
    }


def test_module_no_slot_can_serve_names_module_and_capability(pipelines: Path) -> None:
    pipeline = load_pipeline(pipelines / "planned.py")
    with pytest.raises(
        RequirementError,
        match=r"no runner can serve 'build_windows' "
        r"\(ubuntu-latest: lacks os windows \(pool: linux\)\)",
    ):
        plan_pipeline(pipeline, [RunnerPool(count=2)])


def test_costs_come_from_history_then_hint_then_median_then_default() -> None:
    a = Module(lambda: None, name="a", cost=10)
    b = Module(lambda: None, name="b", cost=2)
    c = Module(lambda: None, name="c")
    pipeline = Pipeline([a, b, c])
    history = History({"a": ModuleHistory(ewma=3.0, last=3.0, runs=4, result_bytes=2_000_000)})
    costs = plan_pipeline(pipeline, [RunnerPool(count=1)], history=history).inputs.modules
    assert (costs["a"].seconds, costs["a"].source) == (3.0, "history")
    assert (costs["b"].seconds, costs["b"].source) == (2.0, "hint")
    assert (costs["c"].seconds, costs["c"].source) == (2.5, "median")
    assert costs["a"].result_bytes == 2_000_000
    lone = plan_pipeline(Pipeline([Module(lambda: None, name="x")]), [RunnerPool(count=1)])
    assert lone.inputs.modules["x"].seconds == 1.0 and lone.inputs.modules["x"].source == "default"


def test_transfer_cost_makes_cross_slot_edges_expensive() -> None:
    root = Module(lambda: None, name="root", cost=1)
    kids = [Module(lambda: None, name=f"k{i}", cost=1, depends_on=[root]) for i in range(2)]
    pipeline = Pipeline([root, *kids])
    cheap = plan_pipeline(pipeline, [RunnerPool(count=2)], transfer=Transfer.for_store("file"))
    assert len({s.slot for s in cheap.slots if s.modules}) == 2  # parallel kids pay 0.02 s
    slow = Transfer.for_store("github", latency=10.0)
    costly = plan_pipeline(pipeline, [RunnerPool(count=2)], transfer=slow)
    assert costly.makespan == pytest.approx(3.0)  # all on one slot beats a 10 s hand-off
    assert costly.inputs.transfer.latency == 10.0


def test_transfer_for_store_takes_the_store_profile() -> None:
    for scheme, backend in BACKENDS.items():
        transfer = Transfer.for_store(scheme)
        assert (transfer.store, transfer.latency, transfer.bandwidth) == (
            scheme,
            backend.profile.latency,
            backend.profile.bandwidth,
        )
    assert Transfer.for_store("github", bandwidth=5e6).latency == BACKENDS["github"].profile.latency
    with pytest.raises(UsageError, match="unknown store kind 'ftp'; use one of file, github"):
        Transfer.for_store("ftp")
    with pytest.raises(UsageError, match="latency must be >= 0"):
        Transfer.for_store("file", latency=-1)
    with pytest.raises(UsageError, match="bandwidth must be > 0"):
        Transfer.for_store("file", bandwidth=0)


def test_a_limit_of_one_place_is_an_exclusive_key() -> None:
    mods = [
        Module(lambda: None, name=f"m{i}", cost=1, parallel_limit=ciflow.ParallelLimit("db", 1))
        for i in range(3)
    ]
    plan = plan_pipeline(Pipeline(mods), [RunnerPool(count=3)])
    ends = sorted((start, finish) for _, start, finish in spans(plan).values())
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:], strict=False))
    assert plan.makespan == pytest.approx(3.0)
    assert plan.lower_bound == pytest.approx(3.0)  # the key's total work bounds the makespan


def test_alone_module_overlaps_nothing() -> None:
    mods = [Module(lambda: None, name=f"m{i}", cost=1) for i in range(4)]
    mods.append(Module(lambda: None, name="alone", cost=1, not_in_parallel=True))
    plan = plan_pipeline(Pipeline(mods), [RunnerPool(count=4)])
    at = spans(plan)
    for i in range(4):
        m = at[f"m{i}"]
        assert m[2] <= at["alone"][1] or at["alone"][2] <= m[1]
    assert plan.makespan == pytest.approx(2.0)  # the others still run side by side


def test_parse_pool_and_errors() -> None:
    pool = parse_pool("count=2 runs-on=macos-14 os=macos arch=arm64 tools=docker,make tags=gpu")
    assert pool == RunnerPool(
        count=2,
        runs_on="macos-14",
        os="macos",
        arch="arm64",
        tools=("docker", "make"),
        tags=("gpu",),
    )
    with pytest.raises(UsageError, match="bad --pool item 'color=red'"):
        parse_pool("color=red")
    with pytest.raises(UsageError, match="count must be a whole number"):
        parse_pool("count=many")
    with pytest.raises(UsageError, match="count must be >= 1"):
        parse_pool("count=0")


def test_pools_from_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[[tool.ciflow.runners]]\ncount = 3\nruns-on = "ubuntu-latest"\ntools = ["docker"]\n'
        '[[tool.ciflow.runners]]\nruns-on = "windows-latest"\nos = "windows"\n'
    )
    sub = tmp_path / "ci"
    sub.mkdir()
    pools, where = load_pools(sub)
    assert where == tmp_path / "pyproject.toml"
    assert [(p.count, p.runs_on, p.os, p.tools) for p in pools] == [
        (3, "ubuntu-latest", "linux", ("docker",)),
        (1, "windows-latest", "windows", None),
    ]
    (tmp_path / "pyproject.toml").write_text('[[tool.ciflow.runners]]\ncount = "x"\n')
    with pytest.raises(UsageError, match=r"runner pool count: Input should be a valid integer"):
        load_pools(sub)


def test_cli_plan_text_json_gantt_out_and_github_output(
    pipelines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github_output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))
    out = tmp_path / "plan.json"
    args = [
        "plan",
        "-f",
        str(pipelines / "planned.py"),
        "--pool",
        "count=3 runs-on=ubuntu-latest os=linux tools=docker",
        "--pool",
        "count=1 runs-on=windows-latest os=windows tools=",
    ]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Plan for 4 slot(s): predicted makespan")
    windows = result.stdout[result.stdout.index("slot 3 (windows-latest, windows)") :]
    assert "build_windows" in windows
    plan = DistributedExecutionPlan.model_validate_json(out.read_text())
    assert github_output.read_text() == (
        f"matrix={json.dumps(plan.matrix(), separators=(',', ':'))}\nworkers=4\n"
    )
    result = runner.invoke(app, [*args, "--json"])
    assert result.stdout == out.read_text()
    result = runner.invoke(app, [*args, "--gantt"])
    assert (
        result.stdout.startswith("gantt\n") and "section slot 3 (windows-latest)" in result.stdout
    )


def test_cli_plan_schema() -> None:
    result = runner.invoke(app, ["plan", "--schema"])
    schema = json.loads(result.stdout)
    assert schema["title"] == "DistributedExecutionPlan"
    assert {"makespan", "lower_bound", "slots", "inputs"} <= set(schema["properties"])


def test_cli_plan_error_writes_nothing(
    pipelines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    github_output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(github_output))
    out = tmp_path / "plan.json"
    result = runner.invoke(
        app, ["plan", "-f", str(pipelines / "gpu_only.py"), "--workers", "2", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("ciflow: error: no runner can serve 'train'")
    assert "lacks tag 'gpu'" in result.stderr
    assert not out.exists() and not github_output.exists()
    result = runner.invoke(app, ["plan", "-f", str(pipelines / "basic.py")])
    assert result.exit_code == 2 and "no runner slots: pass --workers N" in result.stderr


def test_cli_plan_uses_history_written_by_run(pipelines: Path, tmp_path: Path) -> None:
    history = tmp_path / "history.json"
    result = runner.invoke(
        app, ["run", "-f", str(pipelines / "basic.py"), "--history", str(history)]
    )
    assert result.exit_code == 0
    result = runner.invoke(
        app,
        ["plan", "-f", str(pipelines / "basic.py"), "-w", "2", "--history", str(history), "--json"],
    )
    costs = json.loads(result.stdout)["inputs"]["modules"]
    assert {c["source"] for c in costs.values()} == {"history"}


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[Module], int]:
    n = draw(st.integers(1, 12))
    mods: list[Module] = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        key = draw(st.sampled_from([(), "db", ["db", "port"], "port"]))
        limited = draw(st.booleans())
        mods.append(
            Module(
                lambda: None,
                name=f"m{i}",
                depends_on=[mods[d] for d in sorted(deps)],
                cost=draw(st.integers(0, 9)),
                not_in_parallel=key,
                parallel_limit=ciflow.ParallelLimit("lim", 2) if limited else None,
            )
        )
    return mods, draw(st.integers(1, 4))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_plans_hold_every_constraint(case: tuple[list[Module], int]) -> None:
    mods, slots = case
    pipeline = Pipeline(mods)
    plan = plan_pipeline(pipeline, [RunnerPool(count=slots)])
    at = spans(plan)
    assert set(at) == set(pipeline.modules)
    assert plan.makespan + 1e-6 >= plan.lower_bound
    for name, mod in pipeline.modules.items():
        for dep in mod.depends_on:
            assert at[dep.name][2] <= at[name][1] + 1e-9
    names = list(at)
    for x in names:
        for y in names:
            if x >= y:
                continue
            (sx, bx, ex), (sy, by, ey) = at[x], at[y]
            # zero-cost modules are instants: they overlap nothing
            overlap = bx < ey - 1e-9 and by < ex - 1e-9 and ex > bx and ey > by
            if sx == sy or set(pipeline.modules[x].not_in_parallel) & set(
                pipeline.modules[y].not_in_parallel
            ):
                assert not overlap, (x, y)
    limited = [at[n] for n in names if pipeline.modules[n].parallel_limit is not None]
    for _, start, _ in limited:
        running = sum(1 for _, b, e in limited if b <= start + 1e-9 < e - 1e-9)
        assert running <= 2


def test_a_plan_of_a_newer_schema_version_is_refused() -> None:
    import json

    from pydantic import ValidationError

    from ciflow.planning.plan import DistributedExecutionPlan

    plan = plan_pipeline(Pipeline([Module(lambda: None, name="x")]), [RunnerPool(count=1)])
    data = json.loads(plan.to_json())
    data["schema_version"] = 99
    with pytest.raises(ValidationError, match="plan schema version 99 is newer than this ciflow"):
        DistributedExecutionPlan.model_validate(data)
