"""The GitHub flow against the file store on the same pipeline, with API calls counted.

Runs a plan job and N worker jobs (real processes, each with the variables a runner gives a job
of one workflow run) over ciflow's GitHub emulator (``github://``, the store's default poll and
heartbeat cadence unless ``--poll``/``--heartbeat`` are given), then the same pipeline over a
file store, and prints wall time, Twirp and blob calls per module (what GitHub's rate limits
count) and calls per worker-minute of polling.

    python bench/github.py [--workers 4] [--pipeline tests/pipelines/distributed.py]
    python bench/github.py --modules 40 --poll 0.5
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ciflow.distributed.dryrun import start_workers, supervise  # noqa: E402
from ciflow.distributed.keys import RunKeys  # noqa: E402
from ciflow.distributed.orchestrator import publish_plan  # noqa: E402
from ciflow.distributed.results import read_run  # noqa: E402
from ciflow.model.pipeline import load_pipeline  # noqa: E402
from ciflow.planning.planner import RunnerPool, plan_pipeline  # noqa: E402
from ciflow.stores import open_store  # noqa: E402
from ciflow.testing import environ  # noqa: E402
from ciflow.testing.emulator import GitHubEmulator  # noqa: E402
from ciflow.ui.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_flow(
    file: Path,
    workers: int,
    url: str,
    envs: dict[int, dict[str, str]],
    plan_env: dict[str, str],
    extra: list[str],
) -> tuple[float, list[int], int]:
    """Publish a plan, run the workers, read the run back; (wall seconds, exit codes, modules)."""
    with environ(plan_env):
        store = open_store(url)
        pipeline = load_pipeline(file)
        keys = RunKeys("bench-1")
        publish_plan(store, keys, plan_pipeline(pipeline, [RunnerPool(count=workers)]))
        started = time.monotonic()
        procs = start_workers(
            workers,
            pipeline_file=file,
            store_url=url,
            run_id="bench-1",
            extra=["--jobs", "1", *extra],
            env_of=envs,
        )
        codes = supervise(procs, Console(io.StringIO(), live=False))
        wall = time.monotonic() - started
        result = read_run(store, keys, pipeline.order)
        missing = [r.name for r in result.records if r.outcome is None]
        if missing:
            sys.exit(f"modules without a result: {missing}")
        return wall, codes, len(result.records)


PIPELINE = """
import time
import ciflow
"""

MODULE = """

@ciflow.module(name="m{i}", depends_on={deps!r}, cost={sleep})
def m{i}(ctx) -> int:
    time.sleep({sleep})
    return {i}
"""


def layered(path: Path, n: int, width: int, sleep: float) -> Path:
    """``n`` sleep modules in layers of ``width``; each depends on two of the layer before."""
    text = PIPELINE
    for i in range(n):
        layer, pos = divmod(i, width)
        prev = range((layer - 1) * width, layer * width) if layer else range(0)
        deps = sorted({f"m{prev[pos % width]}", f"m{prev[(pos + 1) % width]}"}) if layer else []
        text += MODULE.format(i=i, deps=deps, sleep=sleep)
    path.write_text(text)
    return path


#: what each record kind is: per module, per worker, or once per run
KINDS = {
    "claims": "module",
    "requests": "module",
    "results": "module",
    "outputs": "module",
    "leases": "module",
    "workers": "worker",
    "alive": "worker",
    "done": "worker",
    "plan": "worker",  # each worker reads it once (the plan job's write is its own)
    "cancel": "run",
}


def breakdown(
    log: list[tuple[str, str, str | None]], prefix: str
) -> dict[tuple[str, str, str], int]:
    """Calls by (job kind, record kind, method); list calls without a name are polls."""
    from ciflow.stores.github.naming import key_from_name

    out: dict[tuple[str, str, str], int] = {}
    for method, job, name in log:
        who = "plan/summary job" if job == "plan" else "worker jobs"
        kind = "(poll)"
        if name is not None:
            key = key_from_name(name, prefix)
            kind = key.split("/")[2] if key and key.count("/") >= 2 else "(other)"
        out[(who, kind, method)] = out.get((who, kind, method), 0) + 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pipeline", type=Path, default=ROOT / "tests/pipelines/distributed.py")
    parser.add_argument(
        "--modules", type=int, default=None, help="generate a layered pipeline of N modules"
    )
    parser.add_argument("--width", type=int, default=4, help="layer width of --modules")
    parser.add_argument("--sleep", type=float, default=0.3, help="seconds per --modules module")
    parser.add_argument("--poll", type=float, default=None, help="worker --poll on github://")
    parser.add_argument("--heartbeat", type=float, default=None, help="heartbeat seconds")
    parser.add_argument(
        "--no-jobs-api", action="store_true", help="the jobs API answers 403: heartbeats"
    )
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    if args.modules:
        file = layered(Path(scratch.name) / "ciflow.py", args.modules, args.width, args.sleep)
    else:
        file = args.pipeline.resolve()
    extra_gh: list[str] = []
    if args.poll is not None:
        extra_gh += ["--poll", str(args.poll)]
    if args.heartbeat is not None:
        extra_gh += ["--heartbeat-interval", str(args.heartbeat)]

    with GitHubEmulator("127.0.0.1", 0) as emu:
        emu.jobs_api = not args.no_jobs_api
        envs = {k: emu.env("77", f"work-{k}") for k in range(args.workers)}
        gh_wall, gh_codes, modules = run_flow(
            file, args.workers, "github://", envs, emu.env("77", "plan"), extra_gh
        )
        twirp = emu.calls
        blobs = emu.blob_calls
        log = emu.call_log
        rest = emu.rest_calls
    with tempfile.TemporaryDirectory() as tmp:
        file_wall, file_codes, _ = run_flow(file, args.workers, f"file://{tmp}/store", {}, {}, [])
    scratch.cleanup()

    from ciflow.stores.github.naming import name_prefix

    calls = breakdown(log, name_prefix())
    total_twirp = sum(twirp.values())
    total_blob = sum(blobs.values())
    worker_minutes = args.workers * gh_wall / 60
    what = f"{args.modules} generated modules" if args.modules else file.name
    print(f"pipeline {what}: {modules} modules, {args.workers} workers")
    print(f"{'store':<10} {'wall s':>7} {'exit codes':<14}")
    print(f"{'github://':<10} {gh_wall:7.2f} {str(gh_codes):<14}")
    print(f"{'file://':<10} {file_wall:7.2f} {str(file_codes):<14}")
    print(f"ratio github/file wall: {gh_wall / file_wall:.2f}")
    print()
    print("Twirp calls by job, record kind and method (emulator log; polls = unfiltered lists):")
    print(f"  {'job':<18} {'record':<10} {'method':<22} {'calls':>6} {'per module':>11}")
    for (who, kind, method), count in sorted(calls.items()):
        print(f"  {who:<18} {kind:<10} {method:<22} {count:6d} {count / modules:11.2f}")
    per_module = sum(
        c for (who, kind, _), c in calls.items()
        if who == "worker jobs" and KINDS.get(kind) == "module"
    )  # fmt: skip
    per_worker = sum(
        c for (who, kind, _), c in calls.items()
        if who == "worker jobs" and KINDS.get(kind) == "worker"
    )  # fmt: skip
    polls = sum(c for (w, kind, _), c in calls.items() if kind == "(poll)" and w == "worker jobs")
    summary = sum(c for (who, _, _), c in calls.items() if who == "plan/summary job")
    print()
    print(f"  module records (claims, requests, results, outputs, leases), worker jobs: "
          f"{per_module / modules:.2f} per module")  # fmt: skip
    print(f"  worker records (registration, heartbeats, done): {per_worker / args.workers:.1f} "
          f"per worker = {per_worker / modules:.2f} per module")  # fmt: skip
    print(f"  polls (ListArtifacts, whole run): {polls / worker_minutes:.1f} per worker-minute, "
          f"{polls / modules:.2f} per module")  # fmt: skip
    print(f"  plan job and summary reading: {summary} calls")
    liveness = "heartbeats (jobs API off)" if args.no_jobs_api else "the jobs API"
    print(f"  liveness by {liveness}: {rest} REST jobs API calls in all")
    for name, count in sorted(blobs.items()):
        print(f"  blob {name:<23} {count:6d}  {count / modules:7.2f} per module")
    print(
        f"  all calls: {total_twirp} Twirp + {total_blob} blob = "
        f"{(total_twirp + total_blob) / modules:.1f} per module"
    )


if __name__ == "__main__":
    main()
