"""The GitHub flow against the file store on the same pipeline, with API calls counted.

Runs a plan job and N worker jobs (real processes, each with the variables a runner gives a job
of one workflow run) over ciflow's GitHub emulator (``github://``, the store's default poll and
heartbeat cadence unless ``--poll``/``--heartbeat`` are given), then the same pipeline over a
file store, and prints wall time, Twirp and blob calls per module (what GitHub's rate limits
count) and calls per worker-minute of polling.

    python bench/github.py [--workers 4] [--pipeline tests/pipelines/distributed.py]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ciflow.console import Console  # noqa: E402
from ciflow.dryrun import start_workers, supervise  # noqa: E402
from ciflow.emulator import GitHubEmulator  # noqa: E402
from ciflow.layout import RunKeys  # noqa: E402
from ciflow.orchestrator import publish_plan  # noqa: E402
from ciflow.pipeline import load_pipeline  # noqa: E402
from ciflow.planner import RunnerPool, plan_pipeline  # noqa: E402
from ciflow.results import read_run  # noqa: E402
from ciflow.stores import open_store  # noqa: E402

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
    saved = {k: os.environ.get(k) for k in plan_env}
    os.environ.update(plan_env)
    try:
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
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pipeline", type=Path, default=ROOT / "tests/pipelines/distributed.py")
    parser.add_argument("--poll", type=float, default=None, help="worker --poll on github://")
    parser.add_argument("--heartbeat", type=float, default=None, help="heartbeat seconds")
    args = parser.parse_args()
    file = args.pipeline.resolve()
    extra_gh: list[str] = []
    if args.poll is not None:
        extra_gh += ["--poll", str(args.poll)]
    if args.heartbeat is not None:
        extra_gh += ["--heartbeat-interval", str(args.heartbeat)]

    with GitHubEmulator("127.0.0.1", 0) as emu:
        envs = {k: emu.env("77", f"work-{k}") for k in range(args.workers)}
        gh_wall, gh_codes, modules = run_flow(
            file, args.workers, "github://", envs, emu.env("77", "plan"), extra_gh
        )
        twirp = emu.calls
        blobs = emu.blob_calls
    with tempfile.TemporaryDirectory() as tmp:
        file_wall, file_codes, _ = run_flow(file, args.workers, f"file://{tmp}/store", {}, {}, [])

    total_twirp = sum(twirp.values())
    total_blob = sum(blobs.values())
    worker_minutes = args.workers * gh_wall / 60
    list_calls = twirp.get("ListArtifacts", 0)
    print(f"pipeline {file.name}: {modules} modules, {args.workers} workers")
    print(f"{'store':<10} {'wall s':>7} {'exit codes':<14}")
    print(f"{'github://':<10} {gh_wall:7.2f} {str(gh_codes):<14}")
    print(f"{'file://':<10} {file_wall:7.2f} {str(file_codes):<14}")
    print(f"ratio github/file wall: {gh_wall / file_wall:.2f}")
    print()
    print("GitHub API calls (emulator counts, all jobs of the run, plan publishing included):")
    for name, count in sorted(twirp.items()):
        print(f"  {name:<28} {count:6d}  {count / modules:7.2f} per module")
    for name, count in sorted(blobs.items()):
        print(f"  blob {name:<23} {count:6d}  {count / modules:7.2f} per module")
    non_poll = total_twirp - list_calls
    print(f"  Twirp calls per module, without ListArtifacts polls: {non_poll / modules:.2f}")
    print(f"  ListArtifacts per worker-minute: {list_calls / worker_minutes:.1f}")
    print(
        f"  all calls: {total_twirp} Twirp + {total_blob} blob = "
        f"{(total_twirp + total_blob) / modules:.1f} per module"
    )


if __name__ == "__main__":
    main()
