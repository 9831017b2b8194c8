"""The chaos suite's long form: hundreds of randomized distributed runs, a table by category.

Each case (`ciflow.testing.chaos`) writes a random pipeline of 6-14 modules with an execution
ledger, runs a plan and 4 real worker processes over a file store (or the GitHub emulator with
30 % faults), brings the trouble of its category, reads the run back with `ciflow summary`
(without the secret) and checks every invariant: one outcome per module with the right value,
no double run on live workers, headline / report / exit code agree, nothing written outside a
workspace, no secret in any output, report or record.

Categories: kill (SIGKILL 1-3 of 4 workers), term (SIGTERM 1-3), faults (30 % GitHub faults),
corrupt (a result or archive corrupted mid-run), plant (records planted mid-run), poison (a
module that exits its process, raises KeyboardInterrupt, fails with the secret, or ships a link
to a file outside), failfast (a failing module without --keep-going).

    python bench/chaos.py                    # 500 cases, 2 at a time
    python bench/chaos.py --cases 70 --parallel 1 --category kill --category poison

Not a test: it prints the table (and each broken case with its seed, to re-run with
``--seed``) and exits 0; ``--strict`` exits 1 when any case broke.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ciflow.testing.chaos import CATEGORIES, Case, Verdict, run_case  # noqa: E402


def _one(case: Case, root: str) -> Verdict:
    return run_case(case, root=Path(root))  # in a process of its own: it sets os.environ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=2, help="cases at once")
    parser.add_argument("--category", action="append", choices=CATEGORIES)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, action="append", help="only these seeds")
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    categories = args.category or list(CATEGORIES)
    if args.seed:
        cases = [Case(c, s) for s in args.seed for c in categories]
    else:
        cases = [
            Case(categories[i % len(categories)], args.first_seed + i) for i in range(args.cases)
        ]
    tried: Counter[str] = Counter()
    held: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    broken: list[Verdict] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ciflow-chaos-bench-") as root:
        with ProcessPoolExecutor(max_workers=args.parallel) as pool:
            futures = [pool.submit(_one, case, root) for case in cases]
            for done, future in enumerate(as_completed(futures), 1):
                verdict = future.result()
                category = verdict.case.category
                tried[category] += 1
                seconds[category] += verdict.seconds
                if verdict.held:
                    held[category] += 1
                else:
                    broken.append(verdict)
                    print(
                        f"  broke: {category} seed {verdict.case.seed}: {verdict.broken[0]}",
                        file=sys.stderr,
                    )
                if done % 25 == 0:
                    print(f"  {done}/{len(cases)} cases", file=sys.stderr)
    wall = time.monotonic() - started
    print(f"chaos: {len(cases)} cases, {args.parallel} at a time, {wall:.0f}s\n")
    print(f"{'category':<10} {'tried':>6} {'held':>6} {'failed':>7} {'s/case':>7}")
    for category in categories:
        n = tried[category]
        per = seconds[category] / n if n else 0.0
        row = f"{category:<10} {n:>6} {held[category]:>6} {n - held[category]:>7} {per:>7.1f}"
        print(row)
    total_held = sum(held.values())
    print(f"{'all':<10} {len(cases):>6} {total_held:>6} {len(cases) - total_held:>7}")
    for verdict in sorted(broken, key=lambda v: (v.case.category, v.case.seed)):
        print(f"\n{verdict.case.category} seed {verdict.case.seed}:")
        for line in verdict.broken[:8]:
            print(f"  {line}")
    return 1 if args.strict and broken else 0


if __name__ == "__main__":
    sys.exit(main())
