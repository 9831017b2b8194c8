"""The GitHub flow against the file store on the same pipeline, with API calls counted.

Runs a plan job and N worker jobs (real processes, each with the variables a runner gives a job
of one workflow run) over ciflow's GitHub emulator (``github://``, the store's default poll and
heartbeat cadence unless ``--poll``/``--heartbeat`` are given), then the same pipeline over a
file store, and prints wall time, Twirp and blob calls per module (what GitHub's rate limits
count), ListArtifacts per worker-minute and the hand-off latency.

``--latency S`` adds S seconds to every Twirp (and jobs API) call in the emulator (its
`Faults.latency`; blob transfers are not delayed).

**Hand-off**: for each module, its *gate* is the last result it had to see before it could
start: the last of its dependencies' results to be finalized (the emulator's FinalizeArtifact
time) or, if later, the result of the module its worker ran just before it. When the gate is
another worker's result, the hand-off is the module's start (its result record, the same
machine's clock) minus that FinalizeArtifact time: listing it, deciding, starting the thread.

``--targets`` runs the two scenarios of ciflow issue #11 over ``github://`` only, 75 ms per
Twirp call, and prints PASS/MISS per target:

- **long**: 40 modules of 6 s in layers of 4 (each needs two of the layer before), 4 workers:
  ListArtifacts per worker-minute <= 10, hand-off p50 <= 1 s, Twirp calls per module <= 6;
- **wide**: 200 modules of 0.3 s in layers of 20, 20 workers: hand-off p50 <= 1 s, Twirp
  calls per module <= 6.

Twirp calls per module count the worker jobs' calls (creates, reads, polls); the plan job's
publish and the summary's read-back are printed beside them ("with plan+summary").

    python bench/github.py [--workers 4] [--pipeline tests/pipelines/distributed.py]
    python bench/github.py --modules 40 --poll 0.5 --latency 0.075
    python bench/github.py --targets                 # both scenarios (about 3 minutes)
    python bench/github.py --targets --scenario long
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ciflow.distributed.dryrun import start_workers, supervise  # noqa: E402
from ciflow.distributed.keys import RunKeys  # noqa: E402
from ciflow.distributed.messages import Done, decode  # noqa: E402
from ciflow.distributed.orchestrator import publish_plan  # noqa: E402
from ciflow.distributed.results import read_run  # noqa: E402
from ciflow.model.outcome import ModuleRecord  # noqa: E402
from ciflow.model.pipeline import Pipeline, load_pipeline  # noqa: E402
from ciflow.planning.planner import RunnerPool, plan_pipeline  # noqa: E402
from ciflow.stores import open_store  # noqa: E402
from ciflow.stores.base import Store  # noqa: E402
from ciflow.testing import environ  # noqa: E402
from ciflow.testing.emulator import Faults, GitHubEmulator  # noqa: E402
from ciflow.ui.console import Console  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = "bench-1"


class TimedEmulator(GitHubEmulator):
    """The emulator, noting when each artifact name was first finalized (epoch seconds)."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0)
        self.finalized: dict[str, float] = {}

    def _finalize_artifact(self, who: Any, req: Any) -> dict[str, Any]:
        answer = super()._finalize_artifact(who, req)
        self.finalized.setdefault(req.text("name"), time.time())
        return answer


@dataclass
class Flow:
    """What one run left: wall seconds, exit codes, the records, the workers' store ops."""

    wall: float
    codes: list[int]
    records: list[ModuleRecord]


def run_flow(
    file: Path,
    workers: int,
    url: str,
    envs: dict[int, dict[str, str]],
    plan_env: dict[str, str],
    extra: list[str],
) -> Flow:
    """Publish a plan, run the workers, read the run back."""
    with environ(plan_env):
        store = open_store(url)
        pipeline = load_pipeline(file)
        keys = RunKeys(RUN)
        publish_plan(store, keys, plan_pipeline(pipeline, [RunnerPool(count=workers)]))
        started = time.monotonic()
        procs = start_workers(
            workers,
            pipeline_file=file,
            store_url=url,
            run_id=RUN,
            extra=["--jobs", "1", *extra],
            env_of=envs,
        )
        codes = supervise(procs, Console(io.StringIO(), live=False))
        wall = time.monotonic() - started
        result = read_run(store, keys, pipeline.order)
        missing = [r.name for r in result.records if r.outcome is None]
        if missing:
            sys.exit(f"modules without a result: {missing}")
        return Flow(wall, codes, list(result.records))


def store_ops(store: Store, keys: RunKeys) -> list[dict[str, int]]:
    """Each worker's store operations, from its deregistration record."""
    out = []
    for key in store.list(keys.done):
        data = store.get(key)
        if data is not None:
            out.append(decode(Done, data, key=key).store_ops)
    return out


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


def handoffs(
    pipeline: Pipeline, records: list[ModuleRecord], finalized: dict[str, float]
) -> list[float]:
    """Hand-off seconds of the modules whose gate was another worker's result (module doc)."""
    from ciflow.stores.github.naming import artifact_name

    keys = RunKeys(RUN)
    done = {
        r.name: finalized[n]
        for r in records
        if (n := artifact_name(keys.result(r.name))) in finalized
    }  # fmt: skip
    by = {r.name: r for r in records}
    mine: dict[str | None, list[ModuleRecord]] = {}
    for rec in sorted((r for r in records if r.start is not None), key=lambda r: r.start or 0.0):
        mine.setdefault(rec.worker, []).append(rec)
    out = []
    for recs in mine.values():
        for i, rec in enumerate(recs):
            deps = [d.name for d in pipeline.modules[rec.name].depends_on if d.name in done]
            gates = [(done[d], by[d].worker) for d in deps]
            if i and recs[i - 1].name in done:
                gates.append((done[recs[i - 1].name], rec.worker))
            if not gates or rec.start is None:
                continue
            when, worker = max(gates, key=lambda g: g[0])
            if worker != rec.worker:
                out.append(rec.start - when)
    return out


@dataclass
class Figures:
    """One github:// run's figures."""

    modules: int
    workers: int
    wall: float
    codes: list[int]
    lists: int  # ListArtifacts by the worker jobs
    polls: int  # of those, the workers' own list/wait looks (their `list` store op)
    twirp_workers: int
    twirp_all: int
    blob_all: int
    rest: int
    hand: list[float]
    calls: dict[tuple[str, str, str], int]
    blobs: dict[str, int]

    @property
    def worker_minutes(self) -> float:
        return self.workers * self.wall / 60

    def quantile(self, q: float) -> float:
        if not self.hand:
            return float("nan")
        if len(self.hand) == 1:
            return self.hand[0]
        return statistics.quantiles(self.hand, n=100, method="inclusive")[round(q * 100) - 1]


def run_github(
    file: Path, workers: int, extra: list[str], latency: float, jobs_api: bool
) -> Figures:
    """One run over the emulator; its figures."""
    from ciflow.stores.github.naming import name_prefix

    emu = TimedEmulator()
    with emu:
        emu.jobs_api = jobs_api
        envs = {k: emu.env("77", f"work-{k}") for k in range(workers)}
        plan_env = emu.env("77", "plan")
        emu.faults = Faults(latency=latency)
        flow = run_flow(file, workers, "github://", envs, plan_env, extra)
        log = emu.call_log
        twirp, blobs, rest = emu.calls, emu.blob_calls, emu.rest_calls
        finalized = dict(emu.finalized)
        calls = breakdown(log, name_prefix())
        with environ(plan_env):
            ops = store_ops(open_store("github://"), RunKeys(RUN))
        figures = Figures(
            modules=len(flow.records),
            workers=workers,
            wall=flow.wall,
            codes=flow.codes,
            lists=sum(1 for m, job, _ in log if m == "ListArtifacts" and job != "plan"),
            polls=sum(o.get("list", 0) for o in ops),
            twirp_workers=sum(1 for _, job, _ in log if job != "plan"),
            twirp_all=sum(twirp.values()),
            blob_all=sum(blobs.values()),
            rest=rest,
            hand=[],
            calls=calls,
            blobs=blobs,
        )
    with environ(plan_env):
        figures.hand = handoffs(load_pipeline(file), flow.records, finalized)
    return figures


@dataclass(frozen=True)
class Scenario:
    """One target scenario of ``--targets``."""

    name: str
    modules: int
    width: int
    sleep: float
    workers: int
    lists_target: float | None  # ListArtifacts per worker-minute (None: no target)


SCENARIOS = {
    "long": Scenario("long", 40, 4, 6.0, 4, 10.0),
    "wide": Scenario("wide", 200, 20, 0.3, 20, None),
}
HANDOFF_P50 = 1.0  # seconds
TWIRP_PER_MODULE = 6.0
TARGET_LATENCY = 0.075  # seconds per Twirp call


def verdict(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "MISS"


def targets(names: list[str], extra: list[str], latency: float, jobs_api: bool) -> None:
    """Run the scenarios; print one row each, then the targets."""
    rows: list[tuple[Scenario, Figures]] = []
    for name in names:
        sc = SCENARIOS[name]
        with tempfile.TemporaryDirectory() as tmp:
            file = layered(Path(tmp) / "ciflow.py", sc.modules, sc.width, sc.sleep)
            rows.append((sc, run_github(file, sc.workers, extra, latency, jobs_api)))
    print(f"github:// over the emulator, {latency * 1000:.0f} ms per Twirp call")
    head = (
        f"{'scenario':<9} {'wall s':>7} {'List/w-min':>10} {'polls/w-min':>11} "
        f"{'hand p50':>8} {'p95':>6} {'n':>4} {'Twirp/mod':>9} {'+plan/sum':>9}  exit codes"
    )
    print(head)
    for sc, f in rows:
        desc = f"{sc.name}"
        print(
            f"{desc:<9} {f.wall:7.1f} {f.lists / f.worker_minutes:10.1f} "
            f"{f.polls / f.worker_minutes:11.1f} {f.quantile(0.5):8.2f} {f.quantile(0.95):6.2f} "
            f"{len(f.hand):4d} {f.twirp_workers / f.modules:9.2f} "
            f"{f.twirp_all / f.modules:9.2f}  {f.codes}"
        )
    print()
    for sc, f in rows:
        what = f"{sc.modules} modules of {sc.sleep:g} s, width {sc.width}, {sc.workers} workers"
        print(f"{sc.name} ({what}):")
        if sc.lists_target is not None:
            per = f.lists / f.worker_minutes
            print(f"  ListArtifacts per worker-minute {per:5.1f} <= {sc.lists_target:g}: "
                  f"{verdict(per, sc.lists_target)}")  # fmt: skip
        p50 = f.quantile(0.5)
        print(f"  hand-off p50 {p50:5.2f} s <= {HANDOFF_P50:g} s: {verdict(p50, HANDOFF_P50)}")
        per_module = f.twirp_workers / f.modules
        print(f"  Twirp calls per module {per_module:5.2f} <= {TWIRP_PER_MODULE:g}: "
              f"{verdict(per_module, TWIRP_PER_MODULE)}")  # fmt: skip


def details(f: Figures, what: str, file_flow: Flow | None) -> None:
    """The default report: wall times beside the file store, calls by record kind."""
    modules, workers = f.modules, f.workers
    print(f"pipeline {what}: {modules} modules, {workers} workers")
    print(f"{'store':<10} {'wall s':>7} {'exit codes':<14}")
    print(f"{'github://':<10} {f.wall:7.2f} {str(f.codes):<14}")
    if file_flow is not None:
        print(f"{'file://':<10} {file_flow.wall:7.2f} {str(file_flow.codes):<14}")
        print(f"ratio github/file wall: {f.wall / file_flow.wall:.2f}")
    print()
    print("Twirp calls by job, record kind and method (emulator log; polls = unfiltered lists):")
    print(f"  {'job':<18} {'record':<10} {'method':<22} {'calls':>6} {'per module':>11}")
    for (who, kind, method), count in sorted(f.calls.items()):
        print(f"  {who:<18} {kind:<10} {method:<22} {count:6d} {count / modules:11.2f}")
    workers_of = {k: c for k, c in f.calls.items() if k[0] == "worker jobs"}
    per_module = sum(c for (_, kind, _), c in workers_of.items() if KINDS.get(kind) == "module")
    per_worker = sum(c for (_, kind, _), c in workers_of.items() if KINDS.get(kind) == "worker")
    summary = sum(c for (who, _, _), c in f.calls.items() if who == "plan/summary job")
    minutes = f.worker_minutes
    print()
    print(f"  module records (claims, requests, results, outputs, leases), worker jobs: "
          f"{per_module / modules:.2f} per module")  # fmt: skip
    print(f"  worker records (registration, heartbeats, done): {per_worker / workers:.1f} "
          f"per worker = {per_worker / modules:.2f} per module")  # fmt: skip
    print(f"  ListArtifacts (whole run), worker jobs: {f.lists / minutes:.1f} per worker-minute, "
          f"{f.lists / modules:.2f} per module; of them the workers' own looks (list, wait): "
          f"{f.polls / minutes:.1f} per worker-minute")  # fmt: skip
    print(
        f"  hand-off (another worker's result finalized -> dependent started): p50 "
        f"{f.quantile(0.5):.2f} s, p95 {f.quantile(0.95):.2f} s over {len(f.hand)} modules"
    )
    print(f"  plan job and summary reading: {summary} calls")
    print(f"  REST jobs API calls in all: {f.rest}")
    for name, count in sorted(f.blobs.items()):
        print(f"  blob {name:<23} {count:6d}  {count / modules:7.2f} per module")
    print(
        f"  all calls: {f.twirp_all} Twirp + {f.blob_all} blob = "
        f"{(f.twirp_all + f.blob_all) / modules:.1f} per module; worker jobs' Twirp: "
        f"{f.twirp_workers / modules:.2f} per module"
    )


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
        "--latency", type=float, default=None,
        help=f"seconds added to every Twirp call (default 0; {TARGET_LATENCY} with --targets)",
    )  # fmt: skip
    parser.add_argument(
        "--no-jobs-api", action="store_true", help="the jobs API answers 403: heartbeats"
    )
    parser.add_argument("--no-file", action="store_true", help="skip the file store's run")
    parser.add_argument("--targets", action="store_true", help="the issue #11 scenarios")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="with --targets: only"
    )
    args = parser.parse_args()
    extra_gh: list[str] = []
    if args.poll is not None:
        extra_gh += ["--poll", str(args.poll)]
    if args.heartbeat is not None:
        extra_gh += ["--heartbeat-interval", str(args.heartbeat)]
    if args.targets:
        latency = TARGET_LATENCY if args.latency is None else args.latency
        names = args.scenario or list(SCENARIOS)
        targets(names, extra_gh, latency, not args.no_jobs_api)
        return
    scratch = tempfile.TemporaryDirectory()
    if args.modules:
        file = layered(Path(scratch.name) / "ciflow.py", args.modules, args.width, args.sleep)
    else:
        file = args.pipeline.resolve()
    figures = run_github(file, args.workers, extra_gh, args.latency or 0.0, not args.no_jobs_api)
    file_flow = None
    if not args.no_file:
        with tempfile.TemporaryDirectory() as tmp:
            file_flow = run_flow(file, args.workers, f"file://{tmp}/store", {}, {}, [])
    scratch.cleanup()
    what = f"{args.modules} generated modules" if args.modules else file.name
    details(figures, what, file_flow)


if __name__ == "__main__":
    main()
