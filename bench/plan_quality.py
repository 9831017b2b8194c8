"""Plan quality on the Standard Task Graph Set (Kasahara lab, 180 random 50-task graphs).

Table 1: makespan above the best known schedule length (optimal or best upper bound) and
planning time per graph, for ciflow's planner (through the pipeline API: modules with ``cost=``
hints, `Pipeline`, `plan_pipeline`), plain HEFT and round-robin, for 2/4/8/16 slots.
Table 2 (robustness): real durations = estimate x lognormal noise (sigma 0.3, fixed seed) and
2 s per cross-slot edge; makespan of following ciflow's static plan and of plan + work stealing,
as ratios to the lower bound of that noisy run.

    python bench/plan_quality.py [--limit N] [--procs 2,4,8,16]

Graphs are read from <repo>/../shared/bench/stg, or from $CIFLOW_STG_DIR.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ciflow.model.module import Module  # noqa: E402
from ciflow.model.pipeline import Pipeline  # noqa: E402
from ciflow.planning import RunnerPool, Transfer, plan_pipeline  # noqa: E402
from ciflow.planning.scheduler import (  # noqa: E402
    Placement,
    Problem,
    Schedule,
    Task,
    heft,
    lower_bound,
    round_robin,
    simulate,
)

NOISE_SIGMA = 0.3
EDGE_SECONDS = 2.0


@dataclass(frozen=True)
class Graph:
    """One STG graph without its two dummy tasks; time units are taken as seconds."""

    name: str  # e.g. "50/rand0000.stg", as in the optimal-value files
    durations: tuple[float, ...]
    preds: tuple[tuple[int, ...], ...]


def stg_dir() -> Path:
    env = os.environ.get("CIFLOW_STG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "bench" / "stg"


def read_graph(root: Path, name: str) -> Graph:
    """Parse `n`, then n+2 lines `id time npred pred...` (0 and n+1 are dummies); `#` comments."""
    rows = [
        line.split()
        for line in (root / name).read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    n = int(rows[0][0])
    durations, preds = [], []
    for row in rows[2 : n + 2]:  # skip the entry dummy (id 0); stop before the exit dummy
        count = int(row[2])
        durations.append(float(row[1]))
        preds.append(tuple(int(p) - 1 for p in row[3 : 3 + count] if int(p) != 0))
    return Graph(name, tuple(durations), tuple(preds))


def best_known(root: Path, slots: int) -> dict[str, float]:
    """Rows `path,P,opt` or `path,P,lower,upper`: the optimum, else the best upper bound."""
    with (root / "Optimal_values" / f"Case50_{slots}_OPT.csv").open() as f:
        return {row[0]: float(row[-1]) for row in csv.reader(f) if row}


def problem_of(graph: Graph, slots: int, transfer: float = 0.0) -> Problem:
    tasks = tuple(
        Task(f"t{i + 1}", d, p, tuple(transfer for _ in p) if transfer else ())
        for i, (d, p) in enumerate(zip(graph.durations, graph.preds, strict=True))
    )
    return Problem(tasks, slots)


def _noop() -> None:
    """The body of every benchmark module: planning never runs it."""


def plan_graph(graph: Graph, slots: int, transfer: float = 0.0) -> Schedule:
    """ciflow's plan for one graph, through the code path users hit.

    Each task becomes a module with a ``cost=`` hint depending on its predecessors; the
    pipeline is validated and planned by `plan_pipeline` for ``slots`` identical runners, with
    ``transfer`` seconds per cross-slot edge. The plan is read back as a `Schedule`.
    """
    mods: list[Module] = []
    for i, (duration, preds) in enumerate(zip(graph.durations, graph.preds, strict=True)):
        mods.append(
            Module(_noop, name=f"t{i + 1}", cost=duration, depends_on=[mods[p] for p in preds])
        )
    result = plan_pipeline(
        Pipeline(mods),
        [RunnerPool(count=slots, os=None)],
        transfer=Transfer(store="file", latency=transfer, bandwidth=1e18),
    )
    where = {m.name: (s.slot, m.start, m.finish) for s in result.slots for m in s.modules}
    placements = tuple(Placement(*where[f"t{i + 1}"]) for i in range(len(graph.durations)))
    return Schedule(placements, result.makespan, result.lower_bound, result.algorithm)


@dataclass
class Row:
    excess: list[float]  # % above best known
    seconds: list[float]

    def cells(self) -> str:
        at = f"{sum(1 for e in self.excess if e <= 1e-9)}/{len(self.excess)}"
        mean_ms, max_ms = 1000 * statistics.fmean(self.seconds), 1000 * max(self.seconds)
        return (
            f"{statistics.fmean(self.excess):+7.3f} {max(self.excess):+6.2f} {at:>7} "
            f"{mean_ms:6.1f} {max_ms:6.1f}"
        )


def quality(graphs: list[Graph], slots: int, known: dict[str, float]) -> dict[str, Row]:
    algorithms: dict[str, Callable[[Graph], Schedule]] = {
        "ciflow": lambda g: plan_graph(g, slots),
        "heft": lambda g: heft(problem_of(g, slots)),
        "round-robin": lambda g: round_robin(problem_of(g, slots)),
    }
    rows = {name: Row([], []) for name in algorithms}
    for graph in graphs:
        for name, run in algorithms.items():
            t0 = time.perf_counter()
            schedule = run(graph)
            rows[name].seconds.append(time.perf_counter() - t0)
            rows[name].excess.append(100 * (schedule.makespan / known[graph.name] - 1))
    return rows


def robustness(graph: Graph, slots: int) -> tuple[float, float, float]:
    """(planned, static, stealing) makespans over the lower bound, with noisy durations."""
    rng = random.Random(f"{graph.name}/{slots}")
    real = [d * rng.lognormvariate(0.0, NOISE_SIGMA) for d in graph.durations]
    problem = problem_of(graph, slots, EDGE_SECONDS)
    schedule = plan_graph(graph, slots, EDGE_SECONDS)
    result = simulate(problem, schedule, real, EDGE_SECONDS)
    noisy = lower_bound(problem_of(Graph(graph.name, tuple(real), graph.preds), slots))
    return schedule.makespan / lower_bound(problem), result.static / noisy, result.stealing / noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N graphs")
    parser.add_argument("--procs", default="2,4,8,16", help="slot counts, e.g. 2,4")
    args = parser.parse_args()
    root = stg_dir()
    if not (root / "50").is_dir():
        sys.exit(f"no STG graphs in {root}/50: set CIFLOW_STG_DIR to the stg directory")
    names = sorted(f"50/{p.name}" for p in (root / "50").glob("*.stg"))[: args.limit]
    graphs = [read_graph(root, name) for name in names]
    procs = [int(p) for p in args.procs.split(",")]

    print(f"Plan quality: {len(graphs)} STG graphs of 50 tasks; % above the best known length")
    print("(optimum, or best upper bound where unproven: negative means ciflow beat it).")
    print("per algorithm: mean% max% at-or-below-best  mean-ms max-ms")
    head = "  ".join(f"{name:^39}" for name in ("ciflow", "heft", "round-robin"))
    print(f"{'P':>3} | {head}")
    for slots in procs:
        rows = quality(graphs, slots, best_known(root, slots))
        print(f"{slots:>3} | " + "  ".join(rows[name].cells() for name in rows), flush=True)

    print()
    print(f"Robustness: real = estimate x lognormal(sigma {NOISE_SIGMA}), {EDGE_SECONDS:g} s per")
    print("cross-slot edge; makespan / lower bound (mean, max over graphs). 'plan' is the")
    print("planned makespan over the estimates' lower bound.")
    print(f"{'P':>3} | {'plan':>13} | {'static plan':>13} | {'plan + stealing':>15}")
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for slots in procs:
            got = list(pool.map(robustness, graphs, [slots] * len(graphs)))
            cols = [[r[k] for r in got] for k in range(3)]
            cells = [f"{statistics.fmean(c):.3f} {max(c):.3f}" for c in cols]
            print(f"{slots:>3} | {cells[0]:>13} | {cells[1]:>13} | {cells[2]:>15}", flush=True)


if __name__ == "__main__":
    main()
