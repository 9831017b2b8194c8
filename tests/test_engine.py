from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import ciflow
from ciflow.errors import RequirementError
from ciflow.execution.engine import Engine
from ciflow.model.module import Module, registered
from ciflow.model.outcome import Outcome, RunResult
from ciflow.model.pipeline import Pipeline, Selection
from ciflow.model.requirements import Capabilities, check_requirements
from ciflow.ui.console import Console


class Timeline:
    """Thread-safe record of module start/end times, to check ordering and overlap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[float]] = {}
        self.active = 0
        self.max_active = 0

    def enter(self, name: str) -> None:
        with self.lock:
            self.spans[name] = [time.monotonic(), float("inf")]
            self.active += 1
            self.max_active = max(self.max_active, self.active)

    def leave(self, name: str) -> None:
        with self.lock:
            self.spans[name][1] = time.monotonic()
            self.active -= 1

    def overlap(self, a: str, b: str) -> bool:
        (s1, e1), (s2, e2) = self.spans[a], self.spans[b]
        return s1 < e2 and s2 < e1


def run(
    tmp_path: Path,
    *,
    selection: Selection | None = None,
    jobs: int = 4,
    keep_going: bool = False,
    modules: list[Module] | None = None,
    **kwargs: Any,
) -> tuple[RunResult, dict[str, Outcome], str]:
    out = io.StringIO()
    pipeline = Pipeline(modules if modules is not None else registered())
    engine = Engine(
        pipeline,
        selection,
        console=Console(out, live=False),
        jobs=jobs,
        keep_going=keep_going,
        workdir=tmp_path,
        handle_signals=False,
        **kwargs,
    )
    result = engine.run()
    outcomes = {r.name: r.outcome for r in result.records if r.outcome is not None}
    assert len(outcomes) == len(result.records), "every module ends with an outcome"
    return result, outcomes, out.getvalue()


class Wheel(BaseModel):
    path: str
    size: int


@dataclasses.dataclass
class Coverage:
    percent: float


def test_results_arrive_by_parameter_name_after_a_json_round_trip(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @ciflow.module
    def build(ctx: ciflow.Context) -> Wheel:
        return Wheel(path="dist/a.whl", size=3)

    @ciflow.module
    def cov(ctx: ciflow.Context) -> Coverage:
        return Coverage(percent=91.5)

    @ciflow.module
    def count() -> list[int]:
        return [1, 2, 3]

    @ciflow.module(depends_on=[build, cov, count])
    def test(build: Wheel, cov: Coverage, count: list[int]) -> dict[str, int]:
        seen.update(build=build, cov=cov, count=count)
        return {"ok": 1}

    result, outcomes, _ = run(tmp_path)
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    assert seen == {
        "build": Wheel(path="dist/a.whl", size=3),
        "cov": Coverage(91.5),
        "count": [1, 2, 3],
    }
    records = {r.name: r for r in result.records}
    assert records["build"].result == b'{"path":"dist/a.whl","size":3}'
    assert records["test"].result == b'{"ok":1}'
    assert result.exit_code == 0


def test_async_modules_run_and_pass_results(tmp_path: Path) -> None:
    @ciflow.module
    async def fetch(ctx: ciflow.Context) -> int:
        await asyncio.sleep(0.01)
        return 41

    @ciflow.module(depends_on=[fetch])
    async def use(fetch: int) -> int:
        return fetch + 1

    result, outcomes, _ = run(tmp_path)
    assert outcomes == {"fetch": Outcome.SUCCEEDED, "use": Outcome.SUCCEEDED}
    assert result.records[1].result == b"42"


def test_dependents_start_after_dependencies_end_and_jobs_bound_parallelism(
    tmp_path: Path,
) -> None:
    timeline = Timeline()

    def make(name: str, deps: list[Module]) -> Module:
        def body() -> None:
            timeline.enter(name)
            time.sleep(0.02)
            timeline.leave(name)

        return ciflow.module(name=name, depends_on=deps)(body)

    roots = [make(f"r{i}", []) for i in range(6)]
    mid = make("mid", roots[:3])
    make("last", [mid, roots[5]])
    _, outcomes, _ = run(tmp_path, jobs=2)
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    assert timeline.max_active == 2
    for dep in ("r0", "r1", "r2"):
        assert timeline.spans[dep][1] <= timeline.spans["mid"][0]
    assert timeline.spans["mid"][1] <= timeline.spans["last"][0]


def test_fail_fast_cancels_running_and_pending_but_runs_always_run(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    @ciflow.module
    def fails(ctx: ciflow.Context) -> None:
        while not pid_file.exists():
            time.sleep(0.01)
        ctx.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])

    @ciflow.module
    def slow(ctx: ciflow.Context) -> None:
        ctx.run(
            [
                sys.executable,
                "-c",
                f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid()));"
                "time.sleep(300)",
            ]
        )

    @ciflow.module(depends_on=[fails])
    def dependent(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[slow])
    def later(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[dependent, later], always_run=True)
    def cleanup(ctx: ciflow.Context) -> None:
        ctx.log("cleanup ran")

    started = time.monotonic()
    result, outcomes, text = run(tmp_path)
    assert time.monotonic() - started < 60  # the 300 s sleeper was killed, not waited for
    assert outcomes == {
        "fails": Outcome.FAILED,
        "slow": Outcome.CANCELLED,
        "dependent": Outcome.DEPENDENCY_FAILED,
        "later": Outcome.CANCELLED,
        "cleanup": Outcome.SUCCEEDED,
    }
    assert result.exit_code == 1
    errors = {r.name: r.error for r in result.records}
    assert (
        errors["fails"] is not None
        and "exit code 3" in errors["fails"]
        and "boom" in errors["fails"]
    )
    assert errors["dependent"] == "dependency fails failed"
    assert "[cleanup] cleanup ran" in text
    pid = int(pid_file.read_text())
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_keep_going_runs_everything_that_does_not_need_the_failure(tmp_path: Path) -> None:
    @ciflow.module
    def fails(ctx: ciflow.Context) -> None:
        raise RuntimeError("broken")

    @ciflow.module
    def other(ctx: ciflow.Context) -> None:
        time.sleep(0.05)

    @ciflow.module(depends_on=[other])
    def after_other(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[fails])
    def after_fail(ctx: ciflow.Context) -> None: ...

    result, outcomes, text = run(tmp_path, keep_going=True)
    assert outcomes == {
        "fails": Outcome.FAILED,
        "other": Outcome.SUCCEEDED,
        "after_other": Outcome.SUCCEEDED,
        "after_fail": Outcome.DEPENDENCY_FAILED,
    }
    assert result.records[0].error == "RuntimeError: broken"
    assert 'raise RuntimeError("broken")' in text  # the traceback is in the module's output


def test_optional_dependency_gives_none_when_skipped_or_not_selected(tmp_path: Path) -> None:
    got: dict[str, Any] = {}

    @ciflow.module(skip_if=lambda ctx: True)
    def docs(ctx: ciflow.Context) -> str:
        return "docs"

    @ciflow.module
    def extra() -> str:
        return "extra"

    @ciflow.module
    def build() -> str:
        return "wheel"

    @ciflow.module(depends_on=[build, ciflow.optional(docs), ciflow.optional(extra)])
    def site(build: str, docs: str | None, extra: str | None) -> None:
        got.update(build=build, docs=docs, extra=extra)

    pipeline = Pipeline(registered())
    _, outcomes, _ = run(tmp_path, selection=pipeline.select(only=["site", "docs"]))
    assert outcomes == {
        "docs": Outcome.SKIPPED,
        "build": Outcome.SUCCEEDED,
        "site": Outcome.SUCCEEDED,
    }
    assert got == {"build": "wheel", "docs": None, "extra": None}


def test_skipped_required_dependency_skips_dependents_with_reasons(tmp_path: Path) -> None:
    @ciflow.module(skip_if=ciflow.env_set("CIFLOW_TEST_SKIP"))
    def gate(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[gate])
    def after(ctx: ciflow.Context) -> None: ...

    result, outcomes, _ = run(tmp_path, environ={"CIFLOW_TEST_SKIP": "1"})
    assert outcomes == {"gate": Outcome.SKIPPED, "after": Outcome.SKIPPED}
    reasons = {r.name: r.skip_reason for r in result.records}
    assert reasons == {
        "gate": "skip_if: CIFLOW_TEST_SKIP is set",
        "after": "dependency gate was skipped",
    }
    assert result.exit_code == 0
    _, outcomes, _ = run(
        tmp_path, environ={}, modules=list(Pipeline(registered()).modules.values())
    )
    assert outcomes == {"gate": Outcome.SUCCEEDED, "after": Outcome.SUCCEEDED}


def test_skip_if_that_raises_fails_the_module(tmp_path: Path) -> None:
    def broken(ctx: ciflow.Context) -> bool:
        raise ValueError("no idea")

    @ciflow.module(skip_if=broken)
    def gate(ctx: ciflow.Context) -> None: ...

    result, outcomes, _ = run(tmp_path)
    assert outcomes == {"gate": Outcome.FAILED}
    assert result.records[0].error == "skip_if raised ValueError: no idea"


def test_skip_selection_marks_module_skipped(tmp_path: Path) -> None:
    @ciflow.module
    def a(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[a])
    def b(ctx: ciflow.Context) -> None: ...

    pipeline = Pipeline(registered())
    result, outcomes, _ = run(tmp_path, selection=pipeline.select(skip=["a"]))
    assert outcomes == {"a": Outcome.SKIPPED, "b": Outcome.SKIPPED}
    assert result.records[0].skip_reason == "left out with --skip"


def test_not_in_parallel_keys_never_overlap(tmp_path: Path) -> None:
    timeline = Timeline()
    specs = {"a": ["db"], "b": ["db", "port"], "c": ["port"], "d": [], "e": ["db"], "f": []}
    for name, keys in specs.items():

        def body(name: str = name) -> None:
            timeline.enter(name)
            time.sleep(0.03)
            timeline.leave(name)

        ciflow.module(name=name, not_in_parallel=keys)(body)

    _, outcomes, _ = run(tmp_path, jobs=6)
    assert set(outcomes.values()) == {Outcome.SUCCEEDED}
    for x in specs:
        for y in specs:
            if x < y and set(specs[x]) & set(specs[y]):
                assert not timeline.overlap(x, y), (x, y)
    assert timeline.max_active >= 2  # unrelated modules still ran side by side


def test_not_in_parallel_true_runs_alone(tmp_path: Path) -> None:
    timeline = Timeline()
    for name in ["a", "b", "alone", "c", "d"]:

        def body(name: str = name) -> None:
            timeline.enter(name)
            time.sleep(0.03)
            timeline.leave(name)

        ciflow.module(name=name, not_in_parallel=(name == "alone"))(body)

    run(tmp_path, jobs=5)
    for other in ["a", "b", "c", "d"]:
        assert not timeline.overlap("alone", other)


def test_parallel_limit_is_shared_by_all_modules_naming_it(tmp_path: Path) -> None:
    timeline = Timeline()
    limit = ciflow.ParallelLimit("browsers", 2)
    for i in range(6):

        def body(name: str = f"m{i}") -> None:
            timeline.enter(name)
            time.sleep(0.03)
            timeline.leave(name)

        ciflow.module(name=f"m{i}", parallel_limit=limit)(body)

    run(tmp_path, jobs=6)
    assert timeline.max_active == 2


def test_timeout_kills_the_command_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (
        "import os, subprocess, sys, time\n"
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{g.pid}}')\n"
        "time.sleep(300)\n"
    )

    @ciflow.module(timeout=0.5)
    def hangs(ctx: ciflow.Context) -> None:
        ctx.run([sys.executable, "-c", script])

    @ciflow.module(depends_on=[hangs])
    def after(ctx: ciflow.Context) -> None: ...

    result, outcomes, _ = run(tmp_path)
    assert outcomes == {"hangs": Outcome.TIMED_OUT, "after": Outcome.DEPENDENCY_FAILED}
    assert result.records[0].error == "timed out after 0.5s"
    assert result.exit_code == 1
    child, grandchild = (int(p) for p in pids.read_text().split())
    deadline = time.monotonic() + 10
    while (_alive(child) or _alive(grandchild)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child) and not _alive(grandchild)


def test_timeout_of_pure_python_code_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    release = threading.Event()

    @ciflow.module(timeout=0.2)
    def spins(ctx: ciflow.Context) -> None:
        release.wait(30)  # ignores cancellation: the engine gives up on it

    @ciflow.module
    def other(ctx: ciflow.Context) -> None: ...

    try:
        result, outcomes, text = run(tmp_path, kill_grace=0.1, keep_going=True)
    finally:
        release.set()
    assert outcomes == {"spins": Outcome.TIMED_OUT, "other": Outcome.SUCCEEDED}
    assert "abandoned" in text


def test_async_timeout_cancels_the_task(tmp_path: Path) -> None:
    @ciflow.module(timeout=0.2)
    async def waits(ctx: ciflow.Context) -> None:
        await asyncio.sleep(300)

    _, outcomes, _ = run(tmp_path)
    assert outcomes == {"waits": Outcome.TIMED_OUT}


def test_retries_until_success(tmp_path: Path) -> None:
    calls: list[int] = []

    @ciflow.module(retries=3, retry_delay=0.01)
    def flaky(ctx: ciflow.Context) -> int:
        calls.append(ctx.attempt)
        if len(calls) < 3:
            raise RuntimeError(f"attempt {ctx.attempt} failed")
        return ctx.attempt

    result, outcomes, text = run(tmp_path)
    assert outcomes == {"flaky": Outcome.SUCCEEDED}
    assert calls == [1, 2, 3] and result.records[0].attempts == 3
    assert result.records[0].result == b"3"
    assert "attempt 1 failed (RuntimeError: attempt 1 failed); retrying in" in text


def test_retries_exhausted_and_timeouts_retried(tmp_path: Path) -> None:
    @ciflow.module(retries=2, retry_delay=0.01)
    def broken(ctx: ciflow.Context) -> None:
        raise RuntimeError(f"attempt {ctx.attempt}")

    @ciflow.module(retries=1, retry_delay=0.01, timeout=0.2)
    async def slow(ctx: ciflow.Context) -> None:
        await asyncio.sleep(300)

    result, outcomes, _ = run(tmp_path, keep_going=True)
    assert outcomes == {"broken": Outcome.FAILED, "slow": Outcome.TIMED_OUT}
    records = {r.name: r for r in result.records}
    assert records["broken"].attempts == 3 and records["broken"].error == "RuntimeError: attempt 3"
    assert records["slow"].attempts == 2


def test_ignore_failure_lets_dependents_run_and_the_run_pass(tmp_path: Path) -> None:
    got: list[Any] = []

    @ciflow.module(ignore_failure=True)
    def optional_check(ctx: ciflow.Context) -> int:
        raise RuntimeError("meh")

    @ciflow.module(depends_on=[optional_check])
    def after(optional_check: int | None) -> None:
        got.append(optional_check)

    result, outcomes, _ = run(tmp_path)
    assert outcomes == {"optional_check": Outcome.IGNORED_FAILURE, "after": Outcome.SUCCEEDED}
    assert got == [None] and result.exit_code == 0
    assert result.records[0].error == "RuntimeError: meh"


def test_result_not_matching_annotation_fails_with_exit_2(tmp_path: Path, pipelines: Path) -> None:
    pipeline = ciflow.load_pipeline(pipelines / "bad_result.py")
    out = io.StringIO()
    result = Engine(
        pipeline, console=Console(out, live=False), workdir=tmp_path, handle_signals=False
    ).run()
    outcomes = {r.name: r.outcome for r in result.records}
    assert outcomes == {"build": Outcome.FAILED, "test": Outcome.DEPENDENCY_FAILED}
    error = result.records[0].error or ""
    assert "returned str 'not a number', which does not match its annotation int" in error
    assert result.exit_code == 2


def test_interrupt_cancels_but_always_run_still_runs(tmp_path: Path) -> None:
    started = threading.Event()

    @ciflow.module
    def sleeps(ctx: ciflow.Context) -> None:
        started.set()
        ctx.run([sys.executable, "-c", "import time; time.sleep(300)"])

    @ciflow.module(depends_on=[sleeps], always_run=True)
    def cleanup(ctx: ciflow.Context) -> None:
        ctx.log("cleanup ran")

    @ciflow.module(depends_on=[sleeps])
    def after(ctx: ciflow.Context) -> None: ...

    out = io.StringIO()
    engine = Engine(
        Pipeline(registered()),
        console=Console(out, live=False),
        workdir=tmp_path,
        handle_signals=False,
    )
    threading.Thread(target=lambda: (started.wait(10), engine.interrupt()), daemon=True).start()
    result = engine.run()
    outcomes = {r.name: r.outcome for r in result.records}
    assert outcomes == {
        "sleeps": Outcome.CANCELLED,
        "cleanup": Outcome.SUCCEEDED,
        "after": Outcome.CANCELLED,
    }
    assert result.exit_code == 130 and result.interrupted
    assert "interrupted: cancelling running modules" in out.getvalue()


def test_second_interrupt_cancels_always_run_modules_too(tmp_path: Path) -> None:
    started = threading.Event()

    @ciflow.module(always_run=True)
    def stubborn(ctx: ciflow.Context) -> None:
        started.set()
        ctx.run([sys.executable, "-c", "import time; time.sleep(300)"])

    out = io.StringIO()
    engine = Engine(
        Pipeline(registered()),
        console=Console(out, live=False),
        workdir=tmp_path,
        handle_signals=False,
    )

    def interrupt_twice() -> None:
        started.wait(10)
        engine.interrupt()
        time.sleep(0.3)
        engine.interrupt()

    threading.Thread(target=interrupt_twice, daemon=True).start()
    result = engine.run()
    assert result.records[0].outcome is Outcome.CANCELLED
    assert result.exit_code == 130


def test_check_requirements_names_module_and_missing_capability() -> None:
    @ciflow.module(requires=ciflow.Requires(os="windows", tools=["ciflow-no-such-tool"]))
    def win(ctx: ciflow.Context) -> None: ...

    @ciflow.module(requires=ciflow.Requires(tags=["gpu"]))
    def gpu(ctx: ciflow.Context) -> None: ...

    pipeline = Pipeline(registered())
    caps = Capabilities(os="linux", arch="x86_64", tags=frozenset({"gpu"}))
    with pytest.raises(RequirementError) as info:
        check_requirements(pipeline.modules, ["win", "gpu"], caps)
    message = str(info.value)
    assert "'win' needs os windows (this machine: linux), tool 'ciflow-no-such-tool' on PATH" in (
        message
    )
    assert "gpu" not in message.split(";")[1]  # the tagged module is fine
    check_requirements(pipeline.modules, ["gpu"], caps)


def test_context_workdir_and_run_id(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    @ciflow.module
    def where(ctx: ciflow.Context) -> None:
        seen.update(
            workdir=ctx.workdir,
            run_id=ctx.run_id,
            module=ctx.module,
            cwd=ctx.run("pwd", capture=True).output.strip(),
        )

    result, _, _ = run(tmp_path, run_id="run-42")
    assert seen == {
        "workdir": tmp_path,
        "run_id": "run-42",
        "module": "where",
        "cwd": os.path.realpath(tmp_path),
    }
    assert result.run_id == "run-42"


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[list[int]], set[int], set[int], set[int]]:
    n = draw(st.integers(min_value=1, max_value=14))
    deps = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    failing = draw(st.sets(st.integers(0, n - 1), max_size=2))
    always = draw(st.sets(st.integers(0, n - 1), max_size=2))
    keyed = draw(st.sets(st.integers(0, n - 1), max_size=4))
    return n, deps, failing, always, keyed


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=dags(), keep_going=st.booleans())
def test_invariants_on_random_pipelines(
    tmp_path: Path,
    case: tuple[int, list[list[int]], set[int], set[int], set[int]],
    keep_going: bool,
) -> None:
    n, deps, failing, always, keyed = case
    timeline = Timeline()
    mods: list[Module] = []
    for i in range(n):

        def body(i: int = i) -> None:
            timeline.enter(f"m{i}")
            time.sleep(0.002)
            timeline.leave(f"m{i}")
            if i in failing:
                raise RuntimeError("planned failure")

        mods.append(
            Module(
                body,
                name=f"m{i}",
                depends_on=[mods[d] for d in deps[i]],
                always_run=i in always,
                not_in_parallel="k" if i in keyed else (),
            )
        )
    result, outcomes, _ = run(tmp_path, modules=mods, keep_going=keep_going)
    assert set(outcomes) == {f"m{i}" for i in range(n)}
    for i in range(n):
        name = f"m{i}"
        if name in timeline.spans:
            for d in deps[i]:  # a dependent never starts before its dependency ended
                if f"m{d}" in timeline.spans:
                    assert timeline.spans[f"m{d}"][1] <= timeline.spans[name][0]
        dep_ok = all(outcomes[f"m{d}"].ok for d in deps[i])
        if not dep_ok and i not in always:
            assert name not in timeline.spans
        if outcomes[name] is Outcome.SUCCEEDED:
            assert name in timeline.spans and i not in failing
        if i in failing and name in timeline.spans:  # failed, or was cancelled while running
            expected = {Outcome.FAILED} if keep_going else {Outcome.FAILED, Outcome.CANCELLED}
            assert outcomes[name] in expected
    keyed_names = [f"m{i}" for i in keyed if f"m{i}" in timeline.spans]
    for a in keyed_names:
        for b in keyed_names:
            if a < b:
                assert not timeline.overlap(a, b)
    assert result.exit_code == (1 if failing else 0)
    if keep_going:  # everything whose dependencies all succeeded ran
        for i in range(n):
            if all(outcomes[f"m{d}"].ok for d in deps[i]):
                assert f"m{i}" in timeline.spans


class _Abort(BaseException):
    """A BaseException that `except Exception` does not catch."""


def test_async_modules_raising_base_exceptions_leave_the_thread_and_its_loop_usable(
    tmp_path: Path,
) -> None:
    """With one thread (one event loop reused by its async modules), a KeyboardInterrupt,
    SystemExit or other BaseException escaping an async module fails just that module; the
    thread and its loop go on to run the next modules."""

    def raiser(name: str, exc: BaseException) -> Module:
        async def fn() -> None:
            await asyncio.sleep(0)
            raise exc

        return ciflow.module(name=name)(fn)

    async def fine() -> int:
        await asyncio.sleep(0)
        return 1

    mods = [
        raiser("interrupts", KeyboardInterrupt()),
        ciflow.module(name="after_interrupt")(fine),
        raiser("exits", SystemExit(4)),
        ciflow.module(name="after_exit")(fine),
        raiser("aborts", _Abort("abort")),
        ciflow.module(name="after_abort")(fine),
    ]
    result, outcomes, _ = run(tmp_path, jobs=1, keep_going=True, modules=mods)
    assert outcomes == {
        "interrupts": Outcome.FAILED,
        "after_interrupt": Outcome.SUCCEEDED,
        "exits": Outcome.FAILED,
        "after_exit": Outcome.SUCCEEDED,
        "aborts": Outcome.FAILED,
        "after_abort": Outcome.SUCCEEDED,
    }
    errors = {r.name: r.error for r in result.records if r.error}
    assert errors == {
        "interrupts": "KeyboardInterrupt: ",
        "exits": "SystemExit: 4",
        "aborts": "_Abort: abort",
    }
    assert not result.interrupted and result.exit_code == 1


def test_a_module_duration_is_measured_on_the_monotonic_clock_not_the_wall_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wall clock jumps an hour while the module runs (NTP, a VM resumed): its duration
    stays what it took, and its end is not before its start."""

    @ciflow.module(name="jumps")
    def jumps() -> None:
        monkeypatch.setattr(time, "time", lambda real=time.time: real() + 3600.0)
        time.sleep(0.05)

    result, outcomes, _ = run(tmp_path, modules=[registered()[-1]])
    assert outcomes == {"jumps": Outcome.SUCCEEDED}
    (record,) = result.records
    assert 0.05 <= record.duration < 60.0
    assert record.end is not None and record.start is not None
    assert record.end - record.start < 60.0  # the start is placed back from the end
