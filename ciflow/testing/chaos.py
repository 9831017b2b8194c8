"""Chaos cases for distributed runs: random pipelines run by 4 real workers under trouble.

Each `Case` writes a random pipeline (modules that sleep, leak a registered secret and append to
an execution ledger), starts a plan and 4 ``ciflow worker`` processes on a file store (or on
``github://`` through the emulator with 30 % faults), makes trouble of one category, then reads the
run with ``ciflow summary`` in a process that does not know the secret, and checks the
invariants (`check`). ``tests/test_chaos.py`` runs a few cases; ``bench/chaos.py`` runs hundreds.

Categories: ``kill`` (SIGKILL 1-3 workers at random times), ``term`` (SIGTERM 1-3 workers),
``faults`` (30 % GitHub faults), ``corrupt`` (a result record damaged mid-run), ``plant`` (junk,
a truncated claim of a worker that never existed and a link planted in the store), ``poison`` (a
module that kills its process, raises `KeyboardInterrupt`, raises with the secret, or declares an
output that links outside the workspace), ``failfast`` (a module fails without ``--keep-going``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import environ

__all__ = ["CATEGORIES", "POISONS", "Case", "Verdict", "run_case"]

CATEGORIES = ("kill", "term", "faults", "corrupt", "plant", "poison", "failfast")
WORKERS = 4
POISONS = ("exit", "interrupt", "secret", "link")
#: how often the summary is asked when it gave up on a faulty store (see `_summary`)
SUMMARY_TRIES = 3
FAST = ["--heartbeat-interval", "0.25", "--heartbeat-timeout", "1.5", "--jobs", "2"]
CASE_TIMEOUT = 120.0  # seconds before a case counts as hung

HEADER = """\
import json, os, sys, time
from pathlib import Path
import ciflow

SECRET = ciflow.secret("CIFLOW_CHAOS_SECRET")


def mark(name):
    with open(os.environ["CIFLOW_CHAOS_LEDGER"], "a") as fh:
        fh.write(json.dumps([name, os.getpid()]) + "\\n")
"""

MODULE = """

@ciflow.module(name="{name}", depends_on={deps}{extra})
def {name}(ctx: ciflow.Context{params}) -> int:
    mark("{name}")
    time.sleep({sleep})
{body}    return 1 + {total}
"""

BODIES = {
    "print": "    print('printed', SECRET)\n",
    "log": "    ctx.log(f'logged {SECRET}')\n",
    "stderr": "    print('to stderr', SECRET, file=sys.stderr)\n",
    "exit": "    os._exit(9)\n",
    "interrupt": "    raise KeyboardInterrupt\n",
    "secret": "    raise RuntimeError(f'failed with {SECRET}')\n",
    "fail": "    raise RuntimeError('planned failure')\n",
    "link": (
        "    (ctx.workdir / 'out').mkdir(exist_ok=True)\n"
        "    (ctx.workdir / 'out' / 'x').symlink_to(os.environ['CIFLOW_CHAOS_OUTSIDE'])\n"
    ),
}


@dataclass(frozen=True)
class Case:
    """One randomized case: its category and the seed everything else follows from."""

    category: str
    seed: int
    poison: str | None = None  # a ``poison`` case's kind (else picked by the seed)

    @property
    def secret(self) -> str:
        return f"s3cr3t-{self.seed}-pa%40ss"


@dataclass
class Verdict:
    """How a case went: ``broken`` lists each invariant that did not hold (empty: it held)."""

    case: Case
    broken: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def held(self) -> bool:
        return not self.broken


@dataclass
class _Pipeline:
    deps: dict[str, list[str]]
    bad: dict[str, str]  # module -> poison or "fail"

    def expected(self) -> dict[str, int]:
        """The value each module returns when everything it needs succeeded."""
        values: dict[str, int] = {}
        for name, deps in self.deps.items():
            values[name] = 1 + sum(values[d] for d in deps)
        return values

    def downstream(self, names: set[str]) -> set[str]:
        """``names`` and every module that depends on them, directly or not."""
        found = set(names)
        for name, deps in self.deps.items():  # dependency order
            if any(d in found for d in deps):
                found.add(name)
        return found


def _write_pipeline(case: Case, rng: random.Random, folder: Path) -> _Pipeline:
    n = rng.randint(6, 14)
    deps: dict[str, list[str]] = {}
    bad: dict[str, str] = {}
    if case.category == "poison":
        kind = rng.choice(POISONS)  # drawn before the module, as the seeds were recorded
        bad[f"m{rng.randrange(n)}"] = case.poison or kind
    elif case.category == "failfast":
        bad[f"m{rng.randrange(n)}"] = "fail"
    text = HEADER
    for i in range(n):
        name = f"m{i}"
        earlier = [f"m{j}" for j in range(i)]
        deps[name] = sorted(rng.sample(earlier, min(len(earlier), rng.randint(0, 2))))
        kind = bad.get(name) or rng.choice(["print", "log", "stderr", "", "", ""])
        extra = ", outputs=['out/*']" if kind == "link" else ""
        text += MODULE.format(
            name=name,
            deps=json.dumps(deps[name]),
            extra=extra,
            params="".join(f", {d}: int" for d in deps[name]),
            sleep=round(rng.uniform(0.05, 0.4), 3),
            body=BODIES.get(kind, ""),
            total=" + ".join(deps[name]) or "0",
        )
    (folder / "ciflow.py").write_text(text)
    return _Pipeline(deps, bad)


def _kills(case: Case, rng: random.Random) -> list[Any]:
    from ..distributed.dryrun import Kill

    if case.category not in ("kill", "term"):
        return []
    sig = signal.SIGKILL if case.category == "kill" else signal.SIGTERM
    slots = rng.sample(range(WORKERS), rng.randint(1, WORKERS - 1))
    return [Kill(s, round(rng.uniform(0.3, 2.5), 2), sig) for s in slots]


@contextmanager
def _emulated(case: Case, folder: Path) -> Iterator[tuple[str, dict[int, dict[str, str]], Any]]:
    """The store URL, per-slot variables and the emulator (None for a file store)."""
    if case.category != "faults":
        yield f"file://{folder / 'store'}", {}, None
        return
    from .emulator import Faults, GitHubEmulator

    with GitHubEmulator("127.0.0.1", 0, data_dir=folder / "store") as emu:
        kinds = ["429", "500", "503", "drop", "drop_after"]
        emu.faults = Faults(rate=0.3, kinds=kinds, seed=case.seed)
        envs = {k: emu.env(str(case.seed), f"work-{k}") for k in range(WORKERS)}
        envs[-1] = emu.env(str(case.seed), "plan")
        envs[-2] = emu.env(str(case.seed), "summary")
        yield "github://", envs, emu


def run_case(case: Case, root: Path | None = None) -> Verdict:
    """Run one case end to end and check it; never raises for what the run does."""
    import time

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ciflow-chaos-", dir=root) as tmp:
        verdict = _run(case, Path(tmp))
    verdict.seconds = time.monotonic() - started
    return verdict


def _run(case: Case, folder: Path) -> Verdict:
    from ..distributed.dryrun import copy_workspaces, start_workers

    rng = random.Random(case.seed)
    (folder / "src").mkdir()
    (folder / "outside").mkdir()
    (folder / "outside" / "target.txt").write_text(f"outside-{case.seed}\n")
    pipeline = _write_pipeline(case, rng, folder / "src")
    env = {
        "CIFLOW_CHAOS_LEDGER": str(folder / "ledger.jsonl"),
        "CIFLOW_CHAOS_SECRET": case.secret,
        "CIFLOW_CHAOS_OUTSIDE": str(folder / "outside" / "target.txt"),
    }
    run_id = "chaos" if case.category != "faults" else f"{case.seed}-1"
    with _emulated(case, folder) as (url, envs, emu):
        planned = _plan(folder, url, run_id, envs.get(-1))
        if planned:
            return Verdict(case, [f"plan failed: {planned}"])
        spaces = copy_workspaces(folder / "src", folder / "workspaces", WORKERS)
        extra = [*FAST, *(["--keep-going"] if case.category != "failfast" else [])]
        with environ(env):
            procs = start_workers(WORKERS, pipeline_file=folder / "src" / "ciflow.py",
                                  store_url=url, run_id=run_id, extra=extra,
                                  env_of={k: envs.get(k, {}) for k in range(WORKERS)},
                                  workspaces=spaces)  # fmt: skip
        logs, codes = _supervise(procs, case, rng, folder, emu)
        summary = _summary(folder, url, run_id, envs.get(-2))
    from .chaos_checks import check

    return Verdict(case, check(case, pipeline, folder, procs, codes, logs, summary))


def _cli(args: list[str], env: dict[str, str] | None, timeout: float) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIFLOW_CHAOS")}
    try:
        done = subprocess.run(
            [sys.executable, "-P", "-m", "ciflow", *args], env={**clean, **(env or {})},
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return -1, f"ciflow {args[0]} did not end within {timeout:.0f}s"
    return done.returncode, done.stdout + done.stderr


def _plan(folder: Path, url: str, run_id: str, env: dict[str, str] | None) -> str | None:
    code, out = _cli(["plan", "-f", str(folder / "src" / "ciflow.py"), "--workers", str(WORKERS),
                      "--store", url, "--run-id", run_id], env, 60)  # fmt: skip
    return None if code == 0 else out.strip().splitlines()[-1:][0] if out.strip() else str(code)


def _summary(folder: Path, url: str, run_id: str, env: dict[str, str] | None) -> tuple[int, str]:
    """``ciflow summary`` of the run. Under injected faults every try of one call can fail
    (0.3 ** 6 per call): the summary then ends with that one-line store error, and is asked
    again, as a user re-runs the summary job (up to `SUMMARY_TRIES`; the workers' run is not
    repeated, and any other answer is checked as it is)."""
    report = folder / "report.json"
    for _ in range(SUMMARY_TRIES):
        code, out = _cli(["summary", "--store", url, "--run-id", run_id, "--report",
                          str(report)], env, 60)  # fmt: skip
        last = out.strip().splitlines()[-1:] or [""]
        if not (code == 1 and re.search(r"failed after \d+ attempts", last[0])):
            break
    return code, out


def _supervise(
    procs: list[subprocess.Popen[str]], case: Case, rng: random.Random, folder: Path, emu: Any
) -> tuple[str, list[int]]:
    """Carry out the case's trouble while the workers run; their output and exit codes."""
    import io
    import threading

    from ..distributed.dryrun import supervise
    from ..ui.console import Console
    from .chaos_checks import trouble

    out = io.StringIO()
    stop = threading.Event()
    mischief = threading.Thread(target=trouble, args=(case, rng, folder, stop), daemon=True)
    mischief.start()

    def hung() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()

    timer = threading.Timer(CASE_TIMEOUT, hung)
    timer.start()
    try:
        finish = None
        if emu is not None:
            finish = lambda slot, code: emu.finish_job(  # noqa: E731
                str(case.seed), f"work-{slot}", "success" if code == 0 else "failure"
            )
        codes = supervise(procs, Console(out, live=False), _kills(case, rng), on_exit=finish)
    finally:
        timer.cancel()
        stop.set()
        mischief.join(timeout=5)
    return out.getvalue(), codes
