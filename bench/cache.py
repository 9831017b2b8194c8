"""Result cache: what a full-hit run costs, how fast inputs are hashed, and plans with history.

Part 1 builds, in a temporary folder, a generated pipeline file of ``--layers`` x ``--width``
(default 10 x 20 = 200) ``cache=True`` modules, each depending on 2 modules of the previous
layer, each with ``--inputs`` small input files (a glob) and one small declared output file.
Module bodies are no-ops (``pass``; the output files are written once when the project is made,
so packing has something to pack), so the figures are ciflow's own overhead. Four runs per
repetition, median of ``--repeat``, in this process through the code path of ``ciflow run``
(`open_cache`, `Engine(..., cache=...).run()` with a non-live console to /dev/null,
`finish_cache`: history record and prune of the default folder), the code-digest memo cleared
before each run as in a fresh process:

  (a) cold, cache off (``cache=None``, i.e. ``--no-cache``): the baseline;
  (b) first run with the cache on: all misses, every entry written;
  (c) full hit: every module ``cached``;
  (d) full hit after deleting every declared output: every output restored from its archive.

The same four runs are then timed as ``ciflow run`` subprocesses (wall time, start-up included).
A jobs=1 run of (b), (c) and (d) with timers around the cache's steps shows where a module's
cache time goes, and (c) is timed at several thread counts.

Part 2 hashes ``--hash-mb`` MB of files (a few large, many small) with
`ciflow.cache.digest.input_digests`, beside ``hashlib.sha256`` of the same files read from disk
(page cache warm for both). Part 3 plans pipelines of 60 modules (chains and fan-outs) whose
``cost=`` hints are wrong by a random factor of 0.1x-10x, on 4 slots: with the hints only, with
the history the cache store keeps (3 simulated runs of the true durations, +-``--noise``,
through `record_run` and `merged_history`), and with the true costs; each plan is replayed with
the true durations (`ciflow.planning.simulate`). Part 4 times `expected_hits` on the 200
modules of part 1.

Targets: a full-hit run of 200 modules < 2 s on the file cache; the cache's per-module time on
top of a no-op cold run < 10 % of that cold run's per-module time; plan with history within 5 %
of the plan made from the true costs. Run: ``python bench/cache.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_HIT_S = 2.0  # full-hit run of 200 modules, seconds
TARGET_ON_TOP = 0.10  # cache's per-module time on top of a cold run / cold run's per-module time
TARGET_PLAN = 1.05  # plan with history / plan with the true costs (true makespans)
SLOTS = 4
#: variables that would make `ciflow run` pick another cache than the folder beside the pipeline
_CACHE_ENV = ("CIFLOW_CACHE", "ACTIONS_RUNTIME_TOKEN", "ACTIONS_CACHE_URL", "ACTIONS_RESULTS_URL")


class BenchError(Exception):
    """A run did not do what the figure assumes (a miss where a hit was due, a lost output)."""


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def fs_probe(folder: Path, count: int = 200) -> str:
    """What this scratch folder's file system charges for the metadata operations the cache
    does per module (µs each): the figures below depend on it."""
    folder.mkdir(parents=True)
    payload = b"x" * 500
    t0 = time.perf_counter()
    for i in range(count):
        with open(folder / f"f{i}", "xb") as fh:
            fh.write(payload)
    t1 = time.perf_counter()
    for i in range(count):
        (folder / f"d{i}").mkdir()
    t2 = time.perf_counter()
    for i in range(count):
        tmp = folder / f"t{i}"
        tmp.write_bytes(payload)
        os.replace(tmp, folder / f"f{i}")  # over an existing file
    t3 = time.perf_counter()
    for i in range(count):
        with open(folder / f"f{i}", "r+b") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    t4 = time.perf_counter()
    shutil.rmtree(folder)
    us = [(b - a) / count * 1e6 for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
    return (
        f"create+write {us[0]:.0f}, mkdir {us[1]:.0f}, write tmp + rename over a file "
        f"{us[2]:.0f}, rewrite + fsync {us[3]:.0f}"
    )


# ---------------------------------------------------------------------------- part 1: project


@dataclass(frozen=True)
class Project:
    root: Path
    pipeline_file: Path
    names: tuple[str, ...]
    outputs: dict[str, bytes]  # relative path -> content, to check restores


def make_project(
    root: Path, layers: int, width: int, inputs: int, input_bytes: int, output_bytes: int
) -> Project:
    """A layered DAG of no-op cache=True modules with their input and output files."""
    rng = random.Random(1)
    names: list[str] = []
    lines = [
        '"""Generated by bench/cache.py: no-op cache=True modules."""',
        "",
        "import ciflow",
        "",
    ]
    outputs: dict[str, bytes] = {}
    for layer in range(layers):
        for i in range(width):
            name = f"m{layer:02d}_{i:02d}"
            names.append(name)
            src = root / "src" / name
            src.mkdir(parents=True)
            for k in range(inputs):
                (src / f"in{k}.txt").write_bytes(rng.randbytes(input_bytes))
            out = f"out/{name}.txt"
            outputs[out] = rng.randbytes(output_bytes)
            deps = ""
            if layer:
                prev = sorted({(i) % width, (i + 7) % width})
                deps = "depends_on=[" + ", ".join(f"m{layer - 1:02d}_{j:02d}" for j in prev) + "], "
            lines += [
                f'@ciflow.module({deps}inputs=["src/{name}/*.txt"], outputs=["{out}"], cache=True)',
                f"def {name}() -> None:",
                "    pass",
                "",
                "",
            ]
    (root / "out").mkdir()
    write_outputs(root, outputs)
    pipeline_file = root / "pipeline.py"
    pipeline_file.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return Project(root, pipeline_file, tuple(names), outputs)


def write_outputs(root: Path, outputs: dict[str, bytes]) -> None:
    for rel, data in outputs.items():
        (root / rel).write_bytes(data)


def delete_outputs(project: Project) -> None:
    for rel in project.outputs:
        (project.root / rel).unlink()


def check_outputs(project: Project, what: str) -> None:
    for rel, data in project.outputs.items():
        path = project.root / rel
        if not path.is_file() or path.read_bytes() != data:
            raise BenchError(f"{what}: output {rel} was not restored as it was")


# ---------------------------------------------------------------------------- part 1: runs


@dataclass
class RunTimes:
    """One run's parts (seconds): open_cache, Engine()+run(), finish_cache."""

    open: float
    engine: float
    finish: float

    @property
    def total(self) -> float:
        return self.open + self.engine + self.finish


def _clear_code_memo() -> None:
    from ciflow.cache import key

    key._CODE.clear()  # a fresh `ciflow run` process computes every code digest once
    key._FILES.clear()  # ... and parses the pipeline file once


def run_inprocess(
    pipeline: Any,
    cache_dir: Path | None,
    jobs: int,
    expect: str,
    instrument: Callable[[Any], None] | None = None,
) -> RunTimes:
    """One run as ``ciflow run`` does it (minus loading the file); checks every outcome."""
    from ciflow.cli.cache import finish_cache, open_cache
    from ciflow.execution.engine import Engine
    from ciflow.model.outcome import Outcome
    from ciflow.ui.console import Console

    warnings: list[str] = []
    _clear_code_memo()
    with open(os.devnull, "w", encoding="utf-8") as sink:
        console = Console(sink, live=False)
        t0 = time.perf_counter()
        cache = open_cache(
            pipeline,
            None if cache_dir is None else str(cache_dir),
            off=cache_dir is None,
            rebuild=None,
            warn=warnings.append,
        )
        if instrument is not None and cache is not None:
            instrument(cache)
        t1 = time.perf_counter()
        engine = Engine(
            pipeline,
            console=console,
            jobs=jobs,
            workdir=pipeline.folder,
            cache=cache,
            handle_signals=False,
        )
        result = engine.run()
        t2 = time.perf_counter()
        # explicit=False: the default folder beside the pipeline is pruned, as `ciflow run` does
        finish_cache(cache, result, explicit=False, warn=warnings.append)
        t3 = time.perf_counter()
    if warnings:
        raise BenchError(f"{expect} run warned: {warnings[0]}")
    want = Outcome.CACHED if expect == "hit" else Outcome.SUCCEEDED
    bad = [r for r in result.records if r.outcome is not want]
    if expect == "miss":
        bad += [r for r in result.records if not (r.cache or "").startswith("miss")]
    if expect == "hit":
        bad += [r for r in result.records if r.cache != "hit"]
    if bad or result.exit_code != 0:
        r = bad[0] if bad else result.records[0]
        raise BenchError(
            f"{expect} run: {len(bad)} of {len(result.records)} modules not as expected "
            f"(first: {r.name} {r.state}, cache={r.cache!r}, error={r.error!r})"
        )
    return RunTimes(t1 - t0, t2 - t1, t3 - t2)


KINDS = (
    ("a", "cold, cache off"),
    ("b", "first run, all misses"),
    ("c", "full hit"),
    ("d", "full hit, outputs deleted"),
)


def part1_inprocess(project: Project, pipeline: Any, jobs: int, repeat: int) -> dict[str, Any]:
    """The four runs, ``repeat`` times, interleaved; a fresh cache folder per repetition."""
    times: dict[str, list[RunTimes]] = defaultdict(list)
    base = project.root / ".ciflow"
    for rep in range(repeat):
        shutil.rmtree(base, ignore_errors=True)
        cache_dir = base / "cache"  # the default folder of `ciflow run`
        times["a"].append(run_inprocess(pipeline, None, jobs, "cold"))
        times["b"].append(run_inprocess(pipeline, cache_dir, jobs, "miss"))
        times["c"].append(run_inprocess(pipeline, cache_dir, jobs, "hit"))
        check_outputs(project, "full hit")
        delete_outputs(project)
        times["d"].append(run_inprocess(pipeline, cache_dir, jobs, "hit"))
        check_outputs(project, "full hit after deleting the outputs")
        del rep
    return times


def part1_report(
    times: dict[str, list[RunTimes]], n: int, jobs: int, repeat: int
) -> dict[str, float]:
    print(
        f"(1) runs of {n} no-op cache=True modules, in-process (open_cache + Engine(jobs={jobs})"
        f".run() + finish_cache), median of {repeat}"
    )
    print("    engine = Engine()+run(); finish = finish_cache (history record + prune); ms")
    row = "  {:<30} {:>9} {:>10} {:>8} {:>13} {:>9} {:>9} {:>9}"
    header = row.format(
        "run", "engine ms", "ms/module", "x cold", "+ms/module", "open ms", "finish ms", "total ms"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    med = {
        k: {
            p: _med([getattr(t, p) for t in times[k]])
            for p in ("open", "engine", "finish", "total")
        }
        for k, _ in KINDS
    }
    cold = med["a"]["engine"]
    for k, label in KINDS:
        m = med[k]
        extra = "-" if k == "a" else f"{(m['engine'] - cold) / n * 1e3:.3f}"
        print(
            row.format(
                f"({k}) {label}",
                f"{m['engine'] * 1e3:.1f}",
                f"{m['engine'] / n * 1e3:.3f}",
                f"{m['engine'] / cold:.1f}",
                extra,
                f"{m['open'] * 1e3:.1f}",
                f"{m['finish'] * 1e3:.1f}",
                f"{m['total'] * 1e3:.1f}",
            )
        )
    spread = {
        k: (min(t.engine for t in times[k]), max(t.engine for t in times[k])) for k, _ in KINDS
    }
    print(
        "    engine min..max ms: "
        + ", ".join(f"({k}) {lo * 1e3:.1f}..{hi * 1e3:.1f}" for k, (lo, hi) in spread.items())
    )
    return {k: med[k]["engine"] for k, _ in KINDS} | {
        "c_total": med["c"]["total"],
        "d_total": med["d"]["total"],
    }


# ---------------------------------------------------------------------------- part 1: subprocess


def ciflow_script() -> list[str]:
    name = "ciflow.exe" if os.name == "nt" else "ciflow"
    beside = Path(sysconfig.get_path("scripts")) / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [sys.executable, "-m", "ciflow"]


def _cli(project: Project, jobs: int, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_ENV}
    cmd = [*ciflow_script(), "run", "-f", str(project.pipeline_file), "-j", str(jobs), "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd,
        cwd=project.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stdout.decode(errors="replace").strip().splitlines()[-3:]
        raise BenchError(f"{' '.join(cmd)} exited with {proc.returncode}: {' | '.join(tail)}")
    return wall


def part1_subprocess(project: Project, jobs: int, repeat: int) -> dict[str, float]:
    walls: dict[str, list[float]] = defaultdict(list)
    base = project.root / ".ciflow"
    for _ in range(repeat):
        shutil.rmtree(base, ignore_errors=True)
        walls["a"].append(_cli(project, jobs, "--no-cache"))
        walls["b"].append(_cli(project, jobs))
        data = sorted((base / "cache" / "cache" / "1").glob("*/data/*"))
        if len(data) != len(project.names):
            raise BenchError(f"ciflow run stored {len(data)} entries of {len(project.names)}")
        before = max(p.stat().st_mtime_ns for p in data)
        time.sleep(0.01)
        walls["c"].append(_cli(project, jobs))
        if min(p.stat().st_mtime_ns for p in data) <= before:  # a hit touches its data file
            raise BenchError("ciflow run (full hit): not every entry was used")
        check_outputs(project, "ciflow run full hit")
        delete_outputs(project)
        walls["d"].append(_cli(project, jobs))
        check_outputs(project, "ciflow run full hit after deleting the outputs")
    version = [*ciflow_script(), "--version"]
    starts = []
    for _ in range(max(3, repeat)):
        t0 = time.perf_counter()
        subprocess.run(version, stdout=subprocess.DEVNULL, check=True)
        starts.append(time.perf_counter() - t0)
    n = len(project.names)
    print(
        f"(1s) the same runs as `ciflow run -f pipeline.py -j {jobs} -q` subprocesses (default "
        f"cache .ciflow/cache beside the pipeline), wall, median of {repeat}"
    )
    row = "  {:<30} {:>9} {:>10} {:>8} {:>13}"
    header = row.format("run", "wall ms", "ms/module", "x cold", "+ms/module")
    print(header)
    print("  " + "-" * (len(header) - 2))
    med = {k: _med(walls[k]) for k, _ in KINDS}
    for k, label in KINDS:
        extra = "-" if k == "a" else f"{(med[k] - med['a']) / n * 1e3:.3f}"
        print(
            row.format(
                f"({k}) {label}",
                f"{med[k] * 1e3:.0f}",
                f"{med[k] / n * 1e3:.3f}",
                f"{med[k] / med['a']:.2f}",
                extra,
            )
        )
    print(f"  {'ciflow --version (start-up)':<30} {_med(starts) * 1e3:>9.0f}")
    med["startup"] = _med(starts)
    return med


# ---------------------------------------------------------------------------- part 1: breakdown


def part1_breakdown(project: Project, pipeline: Any) -> None:
    """jobs=1 runs of (b), (c), (d) with timers around the cache's steps (sums = wall)."""
    import ciflow.cache.session as session

    n = len(project.names)
    cache_dir = project.root / ".ciflow" / "cache"
    shutil.rmtree(project.root / ".ciflow", ignore_errors=True)
    sums: dict[str, dict[str, float]] = {}
    engine: dict[str, float] = {}
    steps = (
        ("probe", "lookup: probe() in all"),
        ("parts", "  key parts (inputs glob+hash, code, spec)"),
        ("read", "  entry read (get data + decode + checks)"),
        ("last_parts", "  miss reason (newest parts record)"),
        ("restore", "  restore: _restore() in all"),
        ("fetch", "    copy archive out of the store (get_to_file)"),
        ("unpack", "    unpack_outputs (sha256, zstd, tar, write)"),
        ("touch", "  touch data file"),
        ("finished", "finished() in all"),
        ("save", "  save() in all"),
        ("digest", "    outputs_digest (walk + hash outputs)"),
        ("pack", "    pack_outputs (tar.zst + fsync)"),
        ("write", "    entry write (4 creates, each fsynced)"),
        ("product", "  product (digests for dependents)"),
    )
    import ciflow.distributed.archive as archive
    import ciflow.distributed.restore as restore

    # module attributes the cache code looks up at call time: timed below, then put back
    patched = (
        (session, "touch", "touch"),
        (session, "outputs_digest", "digest"),
        (archive, "pack_outputs", "pack"),
        (restore, "unpack_outputs", "unpack"),
    )
    originals = [getattr(mod, attr) for mod, attr, _ in patched]
    try:
        for kind, expect in (("b", "miss"), ("c", "hit"), ("d", "hit")):
            timer: dict[str, float] = defaultdict(float)

            def timed(fn: Callable[..., Any], label: str, timer: dict[str, float] = timer) -> Any:
                def wrapper(*args: Any, **kwargs: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return fn(*args, **kwargs)
                    finally:
                        timer[label] += time.perf_counter() - t0

                return wrapper

            def instrument(cache: Any, timed: Any = timed) -> None:
                for attr in ("probe", "parts", "_restore", "finished", "save", "product"):
                    label = "restore" if attr == "_restore" else attr
                    setattr(cache, attr, timed(getattr(cache, attr), label))
                cache.entries.read = timed(cache.entries.read, "read")
                cache.entries.last_parts = timed(cache.entries.last_parts, "last_parts")
                cache.entries.fetch_outputs = timed(cache.entries.fetch_outputs, "fetch")
                cache.entries.write = timed(cache.entries.write, "write")

            for (mod, attr, label), fn in zip(patched, originals, strict=True):
                setattr(mod, attr, timed(fn, label))
            if kind == "d":
                delete_outputs(project)
            t = run_inprocess(pipeline, cache_dir, 1, expect, instrument)
            check_outputs(project, f"breakdown ({kind})")
            sums[kind], engine[kind] = dict(timer), t.engine
    finally:
        for (mod, attr, _), fn in zip(patched, originals, strict=True):
            setattr(mod, attr, fn)
    print("(1b) where a module's cache time goes: jobs=1 runs, µs per module (timers' sums / n)")
    row = "  {:<44} {:>12} {:>12} {:>12}"
    print(row.format("step", "(b) misses", "(c) hits", "(d) restores"))
    print("  " + "-" * 82)
    for key, label in steps:
        print(row.format(label, *(f"{sums[k].get(key, 0.0) / n * 1e6:.0f}" for k in "bcd")))
    print(
        row.format("Engine()+run() (whole, jobs=1)", *(f"{engine[k] / n * 1e6:.0f}" for k in "bcd"))
    )
    print()


def part1_jobs(project: Project, pipeline: Any, jobs_list: Sequence[int], repeat: int) -> None:
    """The full-hit run at several thread counts (the cache of the breakdown is complete)."""
    cache_dir = project.root / ".ciflow" / "cache"
    n = len(project.names)
    print(
        f"(1j) full-hit run (c) by engine threads, in-process Engine()+run(), median of {repeat}"
        f" ({os.cpu_count()} CPUs; `ciflow run` defaults to CPUs x 2)"
    )
    row = "  {:>5} {:>12} {:>14} {:>10} {:>11}"
    print(row.format("jobs", "cold ms", "full hit ms", "ms/module", "x jobs=1"))
    print("  " + "-" * 56)
    first = 0.0
    for jobs in jobs_list:
        cold = _med([run_inprocess(pipeline, None, jobs, "cold").engine for _ in range(repeat)])
        hit = _med([run_inprocess(pipeline, cache_dir, jobs, "hit").engine for _ in range(repeat)])
        first = first or hit
        print(
            row.format(
                jobs,
                f"{cold * 1e3:.1f}",
                f"{hit * 1e3:.1f}",
                f"{hit / n * 1e3:.3f}",
                f"{hit / first:.2f}",
            )
        )
    print()


def part1_targets(med: dict[str, float], cli: dict[str, float] | None, n: int) -> list[str]:
    """Print part 1's targets (see the README for how the 10 % one is read); their verdicts."""
    verdicts: list[str] = []
    cold_pm, hit_pm = med["a"] / n, med["c"] / n
    on_top = (hit_pm - cold_pm) / cold_pm
    print("(1t) targets of part 1")
    ok = med["c_total"] < TARGET_HIT_S
    verdicts.append(_verdict(ok))
    print(
        f"  full-hit run, in-process total (open+engine+finish): {med['c_total']:.3f} s"
        f" vs < {TARGET_HIT_S:g} s  ({med['c_total'] / TARGET_HIT_S:.1%} of it)  "
        f"{_verdict(ok)}"
    )
    if cli is not None:
        ok = cli["c"] < TARGET_HIT_S
        verdicts.append(_verdict(ok))
        print(
            f"  full-hit run, `ciflow run` wall: {cli['c']:.3f} s vs < {TARGET_HIT_S:g} s"
            f"  ({cli['c'] / TARGET_HIT_S:.1%} of it)  {_verdict(ok)}"
        )
    ok = on_top < TARGET_ON_TOP
    verdicts.append(_verdict(ok))
    print(
        f"  cache on top, per module (engine, in-process): full hit {hit_pm * 1e3:.3f} ms"
        f" - cold {cold_pm * 1e3:.3f} ms = {(hit_pm - cold_pm) * 1e3:.3f} ms = "
        f"{on_top:.0%} of the cold per-module time vs < {TARGET_ON_TOP:.0%}  "
        f"{_verdict(ok)}"
    )
    miss_top = (med["b"] - med["a"]) / med["a"]
    print(
        "    (info) first run, all misses: "
        f"{(med['b'] - med['a']) / n * 1e3:.3f} ms/module on top = {miss_top:.0%} of cold"
    )
    if cli is not None:
        cli_top = (cli["c"] - cli["a"]) / cli["a"]
        print(
            f"    (info) as `ciflow run` walls (start-up in the cold run's time): "
            f"full hit {cli['c'] / n * 1e3:.2f} vs cold {cli['a'] / n * 1e3:.2f} ms/module,"
            f" on top {cli_top:.0%}"
        )
    print()
    return verdicts


# ---------------------------------------------------------------------------- part 2: hashing


def make_hash_data(root: Path, total_mb: int, large_files: int, small_kb: int) -> tuple[int, int]:
    """80 % of the bytes in ``large_files`` files, 20 % in files of ``small_kb`` KB."""
    total = total_mb * 1_000_000
    large_bytes = int(total * 0.8) // max(1, large_files)
    small_bytes = small_kb * 1000
    small_count = max(1, int(total * 0.2) // small_bytes)
    (root / "large").mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    for i in range(large_files):
        with open(root / "large" / f"big{i}.bin", "wb") as fh:
            left = large_bytes
            while left > 0:
                piece = chunk[: min(left, len(chunk))]
                fh.write(piece)
                fh.write(i.to_bytes(4, "little"))  # no two files the same
                left -= len(piece) + 4
    rng = random.Random(2)
    for i in range(small_count):
        folder = root / "small" / f"d{i // 100:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:05d}.bin").write_bytes(rng.randbytes(small_bytes))
    return large_files, small_count


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _hashlib_files(files: Sequence[Path], algo: str) -> int:
    size = 0
    for path in files:
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, algo).hexdigest()
        size += path.stat().st_size
    return size


def part2_hashing(root: Path, total_mb: int, large: int, small_kb: int, repeat: int) -> None:
    from ciflow.cache.digest import input_digests

    data = root / "data"
    n_large, n_small = make_hash_data(data, total_mb, large, small_kb)
    cases = (
        ("all, folder pattern", ["data"], _files_under(data)),
        ("all, glob data/**/*.bin", ["data/**/*.bin"], _files_under(data)),
        (f"large only ({n_large} files)", ["data/large"], _files_under(data / "large")),
        (f"small only ({n_small} x {small_kb} kB)", ["data/small"], _files_under(data / "small")),
    )
    print(
        f"(2) hashing inputs: {total_mb} MB in {n_large} large files + {n_small} files of "
        f"{small_kb} kB, page cache warm, median of {repeat}; baseline hashlib.sha256 of the "
        "same files read from disk (file_digest); x speed = ciflow MB/s / sha256 MB/s"
    )
    row = "  {:<34} {:>7} {:>12} {:>12} {:>11} {:>8}"
    header = row.format(
        "input_digests(root, patterns)",
        "MB",
        "ciflow MB/s",
        "sha256 MB/s",
        "blake2b MB/s",
        "x speed",
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for label, patterns, files in cases:
        _hashlib_files(files, "sha256")  # warm the page cache
        found = input_digests(root, patterns)
        if len(found) != len(files):
            raise BenchError(f"input_digests found {len(found)} of {len(files)} files ({label})")
        ours, raw, blake = [], [], []
        size = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            input_digests(root, patterns)
            t1 = time.perf_counter()
            size = _hashlib_files(files, "sha256")
            t2 = time.perf_counter()
            _hashlib_files(files, "blake2b")
            t3 = time.perf_counter()
            ours.append(t1 - t0)
            raw.append(t2 - t1)
            blake.append(t3 - t2)
        mb = size / 1e6
        o, r, b = _med(ours), _med(raw), _med(blake)
        print(
            row.format(
                label,
                f"{mb:.0f}",
                f"{mb / o:.0f}",
                f"{mb / r:.0f}",
                f"{mb / b:.0f}",
                f"{r / o:.2f}",
            )
        )
        if label.startswith("small"):
            print(
                f"  {'':34} per small file: ciflow {o / len(files) * 1e6:.1f} µs, "
                f"hashlib {r / len(files) * 1e6:.1f} µs"
            )
    buf = os.urandom(64 << 20)
    mem = {}
    for algo in ("sha256", "blake2b", "sha1", "md5"):
        t0 = time.perf_counter()
        hashlib.new(algo, buf).digest()
        mem[algo] = len(buf) / 1e6 / (time.perf_counter() - t0)
    print(
        "  in-memory hash speed (64 MB buffer), MB/s: "
        + ", ".join(f"{a} {v:.0f}" for a, v in mem.items())
    )
    print()


# ---------------------------------------------------------------------------- part 3: planning


def plan_graph() -> list[tuple[str, list[str]]]:
    """60 modules: setup, 3 chains of 8, a fan-out of 25 with a fan-in, a package, 7 after it."""
    g: list[tuple[str, list[str]]] = [("setup", [])]
    tails = []
    for c in range(3):
        prev = "setup"
        for j in range(8):
            name = f"chain{c}_{j}"
            g.append((name, [prev]))
            prev = name
        tails.append(prev)
    g.append(("gen", ["setup"]))
    leaves = [f"test{i:02d}" for i in range(25)]
    g += [(leaf, ["gen"]) for leaf in leaves]
    g.append(("report", leaves))
    g.append(("package", tails))
    g += [(f"deploy{i}", ["package"]) for i in range(7)]
    return g


def _pipeline(graph: list[tuple[str, list[str]]], costs: dict[str, float] | None) -> Any:
    from ciflow.model.module import Module
    from ciflow.model.pipeline import Pipeline

    def noop() -> None:
        pass

    mods: dict[str, Module] = {}
    for name, deps in graph:
        cost = None if costs is None else costs[name]
        mods[name] = Module(noop, name=name, depends_on=[mods[d] for d in deps], cost=cost)
    return Pipeline(list(mods.values()))


def _true_makespans(plan: Any, graph: list[tuple[str, list[str]]], true: dict[str, float]) -> Any:
    """Replay ``plan``'s slot orders with the true durations (static, and with stealing)."""
    from ciflow.planning.problem import Placement, Problem, Schedule, Task
    from ciflow.planning.simulate import simulate

    names = [n for n, _ in graph]
    index = {n: i for i, n in enumerate(names)}
    edge = plan.inputs.transfer.cost(0)
    tasks = tuple(
        Task(
            name=n,
            duration=true[n],
            preds=tuple(index[d] for d in deps),
            transfer=tuple(edge for _ in deps),
        )
        for n, deps in graph
    )
    problem = Problem(tasks=tasks, slots=len(plan.slots))
    places: list[Placement | None] = [None] * len(names)
    for slot in plan.slots:
        for pm in slot.modules:
            places[index[pm.name]] = Placement(slot.slot, pm.start, pm.finish)
    if any(p is None for p in places):
        raise BenchError("a plan left a module out")
    schedule = Schedule(tuple(places), plan.makespan, plan.lower_bound, plan.algorithm)  # type: ignore[arg-type]
    return simulate(problem, schedule, [true[n] for n in names])


def part3_planning(root: Path, seeds: int, noise: float, runs: int) -> list[float]:
    from ciflow.cache.history import record_run
    from ciflow.cache.predict import merged_history
    from ciflow.model.outcome import ModuleRecord, Outcome
    from ciflow.planning.history import History, ModuleHistory
    from ciflow.planning.planner import RunnerPool, plan_pipeline
    from ciflow.stores.file import FileStore

    pools = [RunnerPool(count=SLOTS)]
    print(
        f"(3) planning 60 modules (setup, 3 chains of 8, fan-out of 25 + fan-in, package + 7) on "
        f"{SLOTS} slots; true durations lognormal (median 20 s), cost= hints = true x 10^U(-1,1);"
    )
    print(
        f"    history = {runs} simulated runs (true x lognormal(0, {noise})) recorded into a "
        "folder cache with record_run, read back with merged_history;"
    )
    print(
        "    'pred' = the plan's own makespan (its assumed costs); 'true' = its slot orders "
        "replayed with the true durations (static / with stealing); x ref = true / true of "
        "the plan from the true costs"
    )
    row = "  {:>4} {:<26} {:>9} {:>9} {:>8} {:>10} {:>8} {:>8}"
    header = row.format(
        "seed", "plan from", "pred s", "true s", "x ref", "steal s", "x ref", "plan ms"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    ratios: dict[str, list[float]] = defaultdict(list)
    for seed in range(seeds):
        rng = random.Random(100 + seed)
        graph = plan_graph()
        true = {n: min(300.0, max(1.0, rng.lognormvariate(math.log(20), 0.8))) for n, _ in graph}
        hints = {n: true[n] * 10 ** rng.uniform(-1, 1) for n, _ in graph}
        store_dir = root / f"plan-cache-{seed}"
        store = FileStore(f"file://{store_dir}")
        for r in range(runs):
            recs = []
            for n, _ in graph:
                rec = ModuleRecord(n, outcome=Outcome.SUCCEEDED, attempts=1)
                rec.start = 1.7e9 + r * 1000
                rec.duration = true[n] * rng.lognormvariate(0, noise)
                rec.end = rec.start + rec.duration
                recs.append(rec)
            record_run(store, recs)
        from_cache = merged_history(root / "no-such-history.json", store)
        if set(from_cache.modules) != set(true):
            raise BenchError("the cache's history does not cover every module")
        exact = History({n: ModuleHistory(true[n], true[n], runs) for n in true})
        hinted = _pipeline(graph, hints)
        cases = (
            ("true costs (history ewma)", hinted, exact),
            ("hints only (wrong)", hinted, None),
            ("cache history, hints wrong", hinted, from_cache),
            ("true costs as hints", _pipeline(graph, true), None),
        )
        ref = ref_steal = 0.0
        for label, pipe, hist in cases:
            t0 = time.perf_counter()
            plan = plan_pipeline(pipe, pools, history=hist)
            took = time.perf_counter() - t0
            sim = _true_makespans(plan, graph, true)
            if not ref:
                ref, ref_steal = sim.static, sim.stealing
            ratios[label].append(sim.static / ref)
            ratios[label + " steal"].append(sim.stealing / ref_steal)
            print(
                row.format(
                    seed,
                    label,
                    f"{plan.makespan:.1f}",
                    f"{sim.static:.1f}",
                    f"{sim.static / ref:.3f}",
                    f"{sim.stealing:.1f}",
                    f"{sim.stealing / ref_steal:.3f}",
                    f"{took * 1e3:.0f}",
                )
            )
    print("  " + "-" * (len(header) - 2))
    for label in ("hints only (wrong)", "cache history, hints wrong", "true costs as hints"):
        s, st = ratios[label], ratios[label + " steal"]
        print(
            f"  {'':4} {label:<26} x ref static: mean {statistics.fmean(s):.3f}, worst "
            f"{max(s):.3f}; with stealing: mean {statistics.fmean(st):.3f}, worst {max(st):.3f}"
        )
    print()
    return ratios["cache history, hints wrong"]


# ---------------------------------------------------------------------------- part 4: predict


def part4_expected_hits(project: Project, pipeline: Any, repeat: int) -> float:
    from ciflow.cache.predict import expected_hits
    from ciflow.planning.planner import RunnerPool, plan_pipeline
    from ciflow.stores.registry import open_store

    store = open_store(str(project.root / ".ciflow" / "cache"))
    names = list(pipeline.order)
    cold, warm, plans = [], [], []
    hits: set[str] = set()
    for _ in range(repeat):
        _clear_code_memo()
        t0 = time.perf_counter()
        hits = expected_hits(store, pipeline, names)
        t1 = time.perf_counter()
        expected_hits(store, pipeline, names)
        t2 = time.perf_counter()
        plan_pipeline(pipeline, [RunnerPool(count=SLOTS)], cached=hits)
        t3 = time.perf_counter()
        cold.append(t1 - t0)
        warm.append(t2 - t1)
        plans.append(t3 - t2)
    if len(hits) != len(names):
        raise BenchError(f"expected_hits found {len(hits)} of {len(names)} entries")
    empty_dir = project.root / "empty-cache"
    empty = open_store(str(empty_dir))
    _clear_code_memo()
    t0 = time.perf_counter()
    none = expected_hits(empty, pipeline, names)
    t_empty = time.perf_counter() - t0
    n = len(names)
    c, w, p = _med(cold), _med(warm), _med(plans)
    print(
        f"(4) expected_hits on the {n} modules of (1), all in the cache, median of {repeat}; "
        f"baseline plan_pipeline of the same {n} modules ({SLOTS} slots, cached=the hits)"
    )
    row = "  {:<46} {:>9} {:>10} {:>10}"
    print(row.format("", "ms", "ms/module", "x plan"))
    print("  " + "-" * 78)
    print(
        row.format(
            "expected_hits, code digests not memoized",
            f"{c * 1e3:.1f}",
            f"{c / n * 1e3:.3f}",
            f"{c / p:.2f}",
        )
    )
    print(
        row.format(
            "expected_hits, code digests memoized",
            f"{w * 1e3:.1f}",
            f"{w / n * 1e3:.3f}",
            f"{w / p:.2f}",
        )
    )
    print(
        row.format(
            f"expected_hits, empty cache ({len(none)} hits)",
            f"{t_empty * 1e3:.1f}",
            "-",
            f"{t_empty / p:.2f}",
        )
    )
    print(row.format("plan_pipeline (baseline)", f"{p * 1e3:.1f}", f"{p / n * 1e3:.3f}", "1.00"))
    print()
    return c


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=10, help="layers of the DAG (10)")
    parser.add_argument("--width", type=int, default=20, help="modules per layer (20)")
    parser.add_argument("--inputs", type=int, default=3, help="input files per module (3)")
    parser.add_argument("--input-bytes", type=int, default=1000, help="bytes per input (1000)")
    parser.add_argument("--output-bytes", type=int, default=500, help="bytes per output (500)")
    parser.add_argument("--jobs", type=int, default=4, help="engine threads (4)")
    parser.add_argument("--repeat", type=int, default=5, help="in-process repetitions (5)")
    parser.add_argument(
        "--cli-repeat",
        type=int,
        default=3,
        help="`ciflow run` subprocess repetitions (3); 0 skips them",
    )
    parser.add_argument(
        "--sweep-jobs",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[1, 2, 4, 8],
        help="thread counts of the full-hit sweep (1,2,4,8); '' skips it",
    )
    parser.add_argument("--hash-mb", type=int, default=200, help="MB of files to hash (200)")
    parser.add_argument("--large-files", type=int, default=4, help="large files (4)")
    parser.add_argument("--small-kb", type=int, default=16, help="size of small files (16 kB)")
    parser.add_argument("--hash-repeat", type=int, default=3, help="hashing repetitions (3)")
    parser.add_argument("--plan-seeds", type=int, default=5, help="random planning cases (5)")
    parser.add_argument(
        "--noise",
        type=float,
        default=0.1,
        help="sigma of the simulated runs' durations around the truth (0.1)",
    )
    parser.add_argument("--history-runs", type=int, default=3, help="simulated runs (3)")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch folder ($TMPDIR)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    args = parser.parse_args(argv)
    if (
        min(
            args.layers,
            args.width,
            args.inputs,
            args.jobs,
            args.repeat,
            args.hash_mb,
            args.hash_repeat,
            args.plan_seeds,
            args.history_runs,
        )
        < 1
    ):
        parser.error("sizes and repetitions must be >= 1")

    from ciflow import __version__
    from ciflow.model.pipeline import load_pipeline

    n = args.layers * args.width
    started = time.perf_counter()
    print(
        f"result cache: ciflow {__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(
        f"  pipeline: {args.layers} layers x {args.width} = {n} no-op cache=True modules, each "
        f"on 2 of the previous layer, {args.inputs} inputs of {args.input_bytes} B (one glob), "
        f"1 output of {args.output_bytes} B; file cache"
    )
    verdicts: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ciflow-bench-cache-", dir=args.tmp) as tmp:
        root = Path(tmp)
        print(f"  scratch file system, µs per op: {fs_probe(root / 'fs-probe')}")
        print()
        try:
            project = make_project(
                root / "project",
                args.layers,
                args.width,
                args.inputs,
                args.input_bytes,
                args.output_bytes,
            )
            pipeline = load_pipeline(project.pipeline_file)
            times = part1_inprocess(project, pipeline, args.jobs, args.repeat)
            med = part1_report(times, n, args.jobs, args.repeat)
            print()
            part1_breakdown(project, pipeline)
            if args.sweep_jobs:
                part1_jobs(project, pipeline, args.sweep_jobs, 3)
            cli = None
            if args.cli_repeat > 0:
                cli = part1_subprocess(project, args.jobs, args.cli_repeat)
                print()
            verdicts += part1_targets(med, cli, n)
            part2_hashing(root, args.hash_mb, args.large_files, args.small_kb, args.hash_repeat)
            ratios = part3_planning(root, args.plan_seeds, args.noise, args.history_runs)
            worst = max(ratios)
            ok = worst <= TARGET_PLAN
            verdicts.append(_verdict(ok))
            print(
                f"(3t) plan with the cache's history vs plan from the true costs (true makespans):"
                f" mean x{statistics.fmean(ratios):.3f}, worst x{worst:.3f} vs <= "
                f"x{TARGET_PLAN:.2f}  {_verdict(ok)}"
            )
            print()
            part4_expected_hits(project, pipeline, args.repeat)
        except BenchError as exc:
            print(f"cache bench: error: {exc}", file=sys.stderr)
            return 2
    print(f"targets: {' '.join(verdicts)}; bench took {time.perf_counter() - started:.0f} s")
    return 1 if args.strict and "MISS" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
