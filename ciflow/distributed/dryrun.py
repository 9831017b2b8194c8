"""``ciflow dry-run``: the whole distributed run on this machine.

Plans for N slots, publishes the plan to a file store, starts N real ``ciflow worker``
processes on it (the code paths CI uses), interleaves their output, optionally SIGKILLs one
mid-run to show recovery, and ends with the one run summary read back from the store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..ui.console import Console

__all__ = ["Kill", "parse_kill", "start_workers", "supervise"]


@dataclass(frozen=True)
class Kill:
    """Send worker ``slot`` ``sig`` (SIGKILL unless told) ``after`` seconds into the run."""

    slot: int
    after: float
    sig: int = signal.SIGKILL


STOP_GRACE = 10.0  # seconds a stopped dry-run gives its workers to drain before SIGKILL


def parse_kill(spec: str, workers: int) -> Kill:
    """Parse ``SLOT@SECONDS`` (e.g. ``1@2.5``)."""
    slot, sep, after = spec.partition("@")
    try:
        kill = Kill(int(slot), float(after))
    except ValueError:
        kill = None
    if not sep or kill is None or kill.after < 0:
        raise UsageError(f"bad --kill {spec!r}: use SLOT@SECONDS, e.g. --kill 1@2.5")
    if not 0 <= kill.slot < workers:
        raise UsageError(f"--kill {spec}: slot must be within 0..{workers - 1}")
    return kill


def start_workers(
    workers: int,
    *,
    pipeline_file: Path,
    store_url: str,
    run_id: str,
    extra: Sequence[str] = (),
    env_of: Mapping[int, Mapping[str, str]] | None = None,
    workspaces: Sequence[Path] | None = None,
) -> list[subprocess.Popen[str]]:
    """Start one ``ciflow worker`` process per slot (``env_of`` adds variables per slot).

    ``python -P`` keeps the pipeline's folder off ``sys.path``: a pipeline file named
    ``ciflow.py`` there would otherwise shadow the ciflow package.
    """
    procs = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CIFLOW_STORE": store_url}
    env.pop("CIFLOW_RUN_ID", None)
    for slot in range(workers):
        file = pipeline_file if workspaces is None else workspaces[slot] / pipeline_file.name
        cmd = [
            sys.executable, "-P", "-m", "ciflow", "worker", "--slot", str(slot), "--run-id", run_id,
            "-f", str(file), *extra,
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                env={**env, **(env_of or {}).get(slot, {})},
                cwd=file.parent,
            )
        )
    return procs


_NOT_COPIED = (".git", ".venv", "venv", "node_modules", "__pycache__", ".ciflow", ".mypy_cache")


def stop_workers(
    procs: Sequence[subprocess.Popen[str]], console: Console, grace: float = STOP_GRACE
) -> None:
    """Stop the workers still running: SIGINT (they cancel their modules), SIGKILL after grace."""
    alive = [p for p in procs if p.poll() is None]
    if not alive:
        return
    console.print(f"ciflow: dry-run: stopping {len(alive)} worker(s)")
    for proc in alive:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(f"ciflow: dry-run: worker pid {proc.pid} ignored SIGINT for "
                          f"{grace:.0f}s: killed")  # fmt: skip
            proc.kill()
            proc.wait()


def copy_workspaces(source: Path, dest: Path, workers: int) -> list[Path]:
    """One copy of the pipeline's folder per worker, like separate CI runners' checkouts."""
    copies = []
    for slot in range(workers):
        target = dest / f"w{slot}"
        shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(*_NOT_COPIED))
        copies.append(target)
    return copies


def supervise(
    procs: list[subprocess.Popen[str]],
    console: Console,
    kills: Sequence[Kill] = (),
    on_exit: Callable[[int, int], None] | None = None,
) -> list[int]:
    """Interleave the workers' output, carry out ``kills``, wait; return the exit codes.

    ``on_exit(slot, code)`` is called as each worker ends (a test's CI emulator marks its job
    completed there, as the CI would).
    """
    ended: set[int] = set()

    def reap() -> None:
        for slot, proc in enumerate(procs):
            if slot not in ended and proc.poll() is not None:
                ended.add(slot)
                if on_exit is not None:
                    on_exit(slot, proc.returncode)

    started = time.monotonic()
    readers = []
    for slot, proc in enumerate(procs):

        def pump(slot: int = slot, proc: subprocess.Popen[str] = proc) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                console.print(f"w{slot} | {line.rstrip()}")

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        readers.append(thread)
    pending = sorted(kills, key=lambda k: k.after)
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic() - started
            while pending and pending[0].after <= now:
                kill = pending.pop(0)
                proc = procs[kill.slot]
                if proc.poll() is None:
                    proc.send_signal(kill.sig)
                    name = signal.Signals(kill.sig).name
                    console.print(f"ciflow: dry-run: sent worker {kill.slot} {name} at "
                                  f"{now:.1f}s")  # fmt: skip
            reap()
            time.sleep(0.02)
        reap()
    except KeyboardInterrupt:
        stop_workers(procs, console)
        raise
    for thread in readers:
        thread.join(timeout=5)
    for proc in procs:
        if proc.stdout is not None:
            proc.stdout.close()
    return [p.returncode for p in procs]
