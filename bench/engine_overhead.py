"""Engine overhead: ciflow against dask's threaded scheduler and doit on the same no-op graphs.

Runs ``--n`` (default 10,000) no-op modules as a chain and as a layered DAG (width 10: every
module of layer k depends on every module of layer k-1), best of ``--repeat`` runs per tool,
all in this one process, and prints microseconds per module, the ratios and PASS/MISS against
the targets: ciflow <= 30 us per module and >= 3x faster than each peer. It then times
``ciflow --version`` beside ``python -c "import typer"`` (target: <= 1.2x).

ciflow goes through the same code path as ``ciflow run``: `Module` objects, `Pipeline`
validation, `Engine(...).run()` with a non-live console writing to /dev/null. Two figures are
shown: "engine only" (Engine construction + run) and "total" (also building the Module objects
and the Pipeline). The peers' figures include their own graph set-up, so the total is the
headline figure the ratios and targets use.

Needs the peers: ``pip install -e '.[bench]'``. Run: ``python bench/engine_overhead.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDTH = 10
JOBS = 4
TARGET_US = 30.0  # ciflow total, microseconds per module
TARGET_RATIO = 3.0  # peer time / ciflow total time
TARGET_STARTUP = 1.2  # ciflow --version / python -c "import typer"
INSTALL_HINT = "pip install -e '.[bench]'"


class BenchError(Exception):
    """A tool did not run every task, or something the bench needs is missing."""


# ---------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class Graph:
    """A dependency structure shared by all tools: node i depends on nodes ``deps[i]``."""

    label: str
    names: tuple[str, ...]
    deps: tuple[tuple[int, ...], ...]
    sinks: tuple[str, ...]  # nodes nothing depends on (what dask is asked for)

    @property
    def size(self) -> int:
        return len(self.names)


def make_graph(shape: str, n: int) -> Graph:
    digits = len(str(n - 1))
    names = tuple(f"m{i:0{digits}d}" for i in range(n))
    deps: list[tuple[int, ...]] = []
    for i in range(n):
        if shape == "chain":
            deps.append((i - 1,) if i else ())
        else:
            layer = i // WIDTH
            deps.append(tuple(range((layer - 1) * WIDTH, layer * WIDTH)) if layer else ())
    used = {j for d in deps for j in d}
    sinks = tuple(names[i] for i in range(n) if i not in used)
    label = "chain" if shape == "chain" else f"layered (width {WIDTH})"
    return Graph(label, names, tuple(deps), sinks)


# ---------------------------------------------------------------------------- tools


@dataclass
class Measure:
    """One run of one tool: seconds taken, plus named parts (ciflow only)."""

    seconds: float
    parts: dict[str, float] = field(default_factory=dict)


def _check_count(tool: str, graph: Graph, calls: list[None]) -> None:
    if len(calls) != graph.size:
        raise BenchError(
            f"{tool} on the {graph.label} ran {len(calls)} of {graph.size} tasks; "
            "the measurement is invalid"
        )


def run_ciflow(graph: Graph, jobs: int) -> Measure:
    from ciflow.execution.engine import Engine
    from ciflow.model.module import Module
    from ciflow.model.outcome import Outcome
    from ciflow.model.pipeline import Pipeline
    from ciflow.ui.console import Console

    calls: list[None] = []

    def noop() -> None:
        calls.append(None)

    names, deps = graph.names, graph.deps
    with open(os.devnull, "w", encoding="utf-8") as sink:
        t0 = time.perf_counter()
        mods: list[Module] = []
        for i, name in enumerate(names):
            mods.append(Module(noop, name=name, depends_on=[mods[j] for j in deps[i]]))
        t1 = time.perf_counter()
        pipeline = Pipeline(mods)
        t2 = time.perf_counter()
        engine = Engine(
            pipeline, console=Console(sink, live=False), jobs=jobs, handle_signals=False
        )
        result = engine.run()
        t3 = time.perf_counter()
    bad = [r.name for r in result.records if r.outcome is not Outcome.SUCCEEDED]
    if bad or len(result.records) != graph.size or result.exit_code != 0:
        raise BenchError(
            f"ciflow on the {graph.label}: {len(bad)} of {len(result.records)} modules did not "
            f"succeed (first: {bad[:3]}), exit code {result.exit_code}"
        )
    _check_count("ciflow", graph, calls)
    return Measure(t3 - t0, {"Module()": t1 - t0, "Pipeline()": t2 - t1, "Engine()+run()": t3 - t2})


def run_dask(graph: Graph, jobs: int) -> Measure:
    import dask.threaded

    calls: list[None] = []

    def noop(*args: Any) -> None:
        calls.append(None)

    names, deps = graph.names, graph.deps
    t0 = time.perf_counter()
    dsk: dict[str, Any] = {
        name: (noop, *[names[j] for j in deps[i]]) for i, name in enumerate(names)
    }
    dask.threaded.get(dsk, list(graph.sinks), num_workers=jobs)
    t1 = time.perf_counter()
    _check_count("dask", graph, calls)
    return Measure(t1 - t0)


def _memory_db() -> type:
    from doit.dependency import JsonDB  # type: ignore[import-untyped]

    class MemoryDB(JsonDB):  # type: ignore[misc]
        """doit's JSON backend minus the file: nothing is read or written."""

        desc = "in-memory (bench only)"

        def __init__(self, name: str, codec: Any, *, module_name: str | None = None) -> None:
            self.name = name
            self.codec = codec
            self._db: dict[str, Any] = {}

        def dump(self) -> None:
            pass

    return MemoryDB


MemoryDB: type | None = None  # set in main(); doit loads it as plugin "<this module>:MemoryDB"


def doit_args(jobs: int) -> list[str]:
    """doit options: in-memory state, no output capture, report to /dev/null; -n for threads."""
    args = ["run", "--backend", "memory", "--db-file", os.devnull, "-v", "2", "-o", os.devnull]
    if jobs > 0:
        args += ["-n", str(jobs), "-P", "thread"]
    return args


def run_doit(graph: Graph, jobs: int) -> Measure:
    from doit.cmd_base import ModuleTaskLoader  # type: ignore[import-untyped]
    from doit.doit_cmd import DoitMain  # type: ignore[import-untyped]

    calls: list[None] = []

    def noop() -> None:
        calls.append(None)

    names, deps = graph.names, graph.deps

    def task_bench() -> Any:
        for i, name in enumerate(names):
            yield {
                "basename": name,
                "actions": [noop],
                "task_dep": [names[j] for j in deps[i]],
            }

    backend = {"BACKEND": {"memory": f"{__name__}:MemoryDB"}}
    t0 = time.perf_counter()
    main = DoitMain(
        ModuleTaskLoader({"task_bench": task_bench}), config_filenames=(), extra_config=backend
    )
    code = main.run(doit_args(jobs))
    t1 = time.perf_counter()
    if code != 0:
        raise BenchError(f"doit on the {graph.label} exited with {code}")
    _check_count("doit", graph, calls)
    return Measure(t1 - t0)


@dataclass(frozen=True)
class Tool:
    label: str
    run: Callable[[Graph], Measure]
    peer: str | None  # None for ciflow, else the peer it belongs to ("dask", "doit")


def tools(jobs: int) -> list[Tool]:
    return [
        Tool("ciflow", lambda g: run_ciflow(g, jobs), None),
        Tool(f"dask threaded ({jobs} workers)", lambda g: run_dask(g, jobs), "dask"),
        Tool("doit serial (-n 0)", lambda g: run_doit(g, 0), "doit"),
        Tool(f"doit threads (-n {jobs} -P thread)", lambda g: run_doit(g, jobs), "doit"),
    ]


def best_of(graph: Graph, tool_list: Sequence[Tool], repeat: int) -> dict[str, Measure]:
    """Run every tool ``repeat`` times, interleaved, and keep each tool's fastest run."""
    best: dict[str, Measure] = {}
    for _ in range(repeat):
        for tool in tool_list:
            gc.collect()
            measure = tool.run(graph)
            if tool.label not in best or measure.seconds < best[tool.label].seconds:
                best[tool.label] = measure
    return best


# ---------------------------------------------------------------------------- start-up


def ciflow_command() -> tuple[list[str], str]:
    """The installed console script beside this interpreter, else on PATH, else ``-m``.

    The script beside ``sys.executable`` comes first because a PATH entry may be a version
    manager's shim (pyenv's is a bash script) whose own start-up would be measured too.
    """
    name = "ciflow.exe" if os.name == "nt" else "ciflow"
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside), "--version"], str(beside)
    found = shutil.which("ciflow")
    if found:
        return [found, "--version"], found
    return [sys.executable, "-m", "ciflow", "--version"], f"{sys.executable} -m ciflow"


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        first = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise BenchError(f"{' '.join(cmd)} exited with {proc.returncode}: {first[0]}")
    return elapsed


def startup(runs: int) -> str:
    ciflow_cmd, shown = ciflow_command()
    typer_cmd = [sys.executable, "-c", "import typer"]
    _wall(ciflow_cmd)  # warm the page cache and any bytecode caches
    _wall(typer_cmd)
    ciflow_times: list[float] = []
    typer_times: list[float] = []
    for _ in range(runs):
        ciflow_times.append(_wall(ciflow_cmd))
        typer_times.append(_wall(typer_cmd))
    c = statistics.median(ciflow_times)
    t = statistics.median(typer_times)
    ratio = c / t
    verdict = "PASS" if ratio <= TARGET_STARTUP else "MISS"
    print(f"start-up, median of {runs} alternating runs each:")
    print(f"  ciflow --version          {c * 1000:7.1f} ms   ({shown})")
    print(f'  python -c "import typer"  {t * 1000:7.1f} ms')
    print(f"  ratio {ratio:.2f}x (target <= {TARGET_STARTUP}x)  {verdict}")
    return verdict


# ---------------------------------------------------------------------------- report


def _us(seconds: float, n: int) -> float:
    return seconds / n * 1e6


_ROW = "{:<20} {:<31} {:>9} {:>8} {:>9}  {:<17} {}"


def _row(*cols: str) -> None:
    print(_ROW.format(*cols).rstrip())


def report(graph: Graph, tool_list: Sequence[Tool], best: dict[str, Measure]) -> list[str]:
    """Print the rows for one graph; return the verdicts (PASS/MISS) of its targets."""
    n = graph.size
    cf = best["ciflow"]
    total = _us(cf.seconds, n)
    engine = _us(cf.parts["Engine()+run()"], n)
    verdicts = ["PASS" if total <= TARGET_US else "MISS"]
    _row(graph.label, "ciflow total", f"{total:.1f}", "1.00", "-",
         f"<= {TARGET_US:g} µs/module", verdicts[0])  # fmt: skip
    _row("", "ciflow engine only", f"{engine:.1f}", "-", "1.00", "(info)", "")
    fastest: dict[str, float] = {}
    for tool in tool_list:
        if tool.peer is None:
            continue
        us = _us(best[tool.label].seconds, n)
        fastest[tool.peer] = min(us, fastest.get(tool.peer, us))
        ok = "PASS" if us / total >= TARGET_RATIO else "MISS"
        _row("", tool.label, f"{us:.1f}", f"{us / total:.2f}", f"{us / engine:.2f}",
             f">= {TARGET_RATIO:g}x ciflow", ok)  # fmt: skip
    for peer, us in fastest.items():
        ok = "PASS" if us / total >= TARGET_RATIO else "MISS"
        verdicts.append(ok)
        _row("", f"headline: {peer}, best mode", "", f"{us / total:.2f}", "",
             f">= {TARGET_RATIO:g}x ciflow", ok)  # fmt: skip
    split = ", ".join(f"{k} {_us(v, n):.1f}" for k, v in cf.parts.items())
    print(f"{'':20} ciflow total split, µs/module: {split}")
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="modules per graph (10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool; best counts (3)")
    parser.add_argument("--jobs", type=int, default=JOBS, help="workers for every tool (4)")
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=10,
        help="runs of each start-up command (10); 0 skips the start-up check",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1 or args.jobs < 1:
        parser.error("--n, --repeat and --jobs must be >= 1")

    missing = [m for m in ("dask", "doit") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"engine_overhead: {' and '.join(missing)} not installed; run: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2

    global MemoryDB
    MemoryDB = _memory_db()

    from ciflow import __version__

    dask_version = importlib.metadata.version("dask")
    doit_version = importlib.metadata.version("doit")
    print(
        f"engine overhead: {args.n:,} no-op modules per graph, {args.jobs} workers, best of "
        f"{args.repeat}; Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(
        f"  ciflow {__version__}: Module() + Pipeline() + Engine(jobs={args.jobs}, "
        "console to /dev/null, live=False).run(); no-op fn annotated -> None"
    )
    print(
        f"  dask {dask_version}: dict graph of (noop, *deps) tuples + "
        f"dask.threaded.get(dsk, sinks, num_workers={args.jobs})"
    )
    print(
        f"  doit {doit_version}: DoitMain(ModuleTaskLoader) python-action tasks with task_dep,"
        f" args {' '.join(doit_args(0)[1:])} [+ -n {args.jobs} -P thread]"
    )
    print(
        "  every tool's time includes its own graph set-up; each run is checked to have "
        "executed every task"
    )
    print("  ratio = peer µs/module / ciflow µs/module (x total, x engine only)")
    print()
    tool_list = tools(args.jobs)
    header = _ROW.format("graph", "tool", "µs/module", "x total", "x engine", "target", "result")
    print(header)
    print("-" * len(header))
    verdicts: list[str] = []
    try:
        for shape in ("chain", "layered"):
            graph = make_graph(shape, args.n)
            verdicts += report(graph, tool_list, best_of(graph, tool_list, args.repeat))
            print()
        if args.startup_runs > 0:
            verdicts.append(startup(args.startup_runs))
    except BenchError as exc:
        print(f"engine_overhead: error: {exc}", file=sys.stderr)
        return 2
    return 1 if args.strict and "MISS" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
