"""The trouble a chaos case makes in the store while it runs, and the invariants it checks after.

Invariants (each broken one is a line of the case's verdict):
every module ends with exactly one outcome; every module that succeeded returned the right value;
a module only runs again after the worker that ran it died; the summary's headline, its report's
exit code and its process exit code agree, and say OK exactly when every module succeeded; a
poisoned module (and only what depends on it) fails; nothing is written outside the workspaces
and the store, and nothing from outside is carried into the store; the registered secret is in no
worker's output, the summary, the report or any record of the store.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

    from .chaos import Case, _Pipeline

__all__ = ["check", "trouble"]

_OK = {"succeeded", "cached", "ignored_failure"}
_ZSTD = b"\x28\xb5\x2f\xfd"


def trouble(case: Case, rng: random.Random, folder: Path, stop: threading.Event) -> None:
    """For ``corrupt``: damage one result record mid-run; for ``plant``: plant junk records."""
    if case.category not in ("corrupt", "plant"):
        return
    run = folder / "store" / "runs" / "chaos"
    if stop.wait(rng.uniform(0.5, 2.0)):
        return
    if case.category == "plant":
        (run / "claims" / "m1").mkdir(parents=True, exist_ok=True)
        (run / "claims" / "m1" / "0009").write_bytes(b'{"schema_version": 1, "work')  # truncated
        (run / "results").mkdir(parents=True, exist_ok=True)
        (run / "results" / "zz-junk").write_bytes(b"\x00junk")
        try:
            (run / "results" / "m0").symlink_to(folder / "outside" / "target.txt")
        except FileExistsError:
            pass
        (run / "workers").mkdir(parents=True, exist_ok=True)
        (run / "workers" / "s9-ghost").write_bytes(b"{")
        return
    while not stop.is_set():
        results = sorted(p for p in (run / "results").glob("*") if p.is_file())
        if results:
            victim = rng.choice(results)
            data = bytearray(victim.read_bytes())
            if data:
                at = rng.randrange(len(data))
                data[at] ^= 0xFF
                victim.write_bytes(bytes(data))
            return
        time.sleep(0.1)


def check(
    case: Case,
    pipeline: _Pipeline,
    folder: Path,
    procs: list[subprocess.Popen[str]],
    codes: list[int],
    logs: str,
    summary: tuple[int, str],
) -> list[str]:
    """Every invariant that did not hold, one line each."""
    broken: list[str] = []
    code, text = summary
    report = _report(folder / "report.json")
    if report is None:
        broken.append(f"no report (summary exit {code}: {_last(text)})")
        modules: dict[str, dict[str, Any]] = {}
    else:
        modules = {m["name"]: m for m in report.get("modules", [])}
        broken += _agreement(code, text, report, modules)
    died = {p.pid for p, c in zip(procs, codes, strict=True) if c < 0 or c == 9}
    runs = _ledger(folder)
    broken += _outcomes(case, pipeline, modules, _lost_twice(folder, runs, died))
    broken += _double_runs(runs, died)
    broken += _confinement(case, folder)
    broken += _secrets(case, folder, logs + text)
    if any(c == -9 for c in codes) and case.category not in ("kill", "poison"):
        broken.append(f"a worker hung and was killed after the case timeout: {codes}")
    return broken


def _report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def _agreement(
    code: int, text: str, report: dict[str, Any], modules: dict[str, dict[str, Any]]
) -> list[str]:
    broken = []
    headline = next((ln for ln in text.splitlines() if ln.split(":")[0].strip() in
                     ("OK", "FAILED", "INTERRUPTED") or ln.startswith("FAILED")), "")  # fmt: skip
    says_ok = headline.startswith("OK")
    all_ok = bool(modules) and all(m.get("outcome") in _OK for m in modules.values())
    if report.get("exit_code") != code:
        broken.append(f"report exit_code {report.get('exit_code')} != summary exit {code}")
    if says_ok != (code == 0):
        broken.append(f"headline {headline!r} disagrees with exit code {code}")
    if all_ok != (code == 0):
        broken.append(f"exit code {code} but every module ok is {all_ok}")
    return broken


def _outcomes(
    case: Case, pipeline: _Pipeline, modules: dict[str, dict[str, Any]], killed: set[str]
) -> list[str]:
    """``killed``: modules whose workers died under them twice (they may fail for it, and their
    dependents end ``dependency_failed``)."""
    broken = []
    expected = pipeline.expected()
    poisoned = pipeline.downstream(set(pipeline.bad))
    lost = {n for n in killed if _died_under(modules.get(n))}
    after_lost = pipeline.downstream(lost) - lost
    for name in pipeline.deps:
        entry = modules.get(name)
        outcome = None if entry is None else entry.get("outcome")
        if outcome in (None, "missing"):
            broken.append(f"{name} has no outcome")
            continue
        if outcome in _OK and entry is not None and entry.get("result") != expected[name]:
            broken.append(f"{name} {outcome} with {entry.get('result')!r}, not {expected[name]}")
        if name in pipeline.bad and outcome in _OK:
            broken.append(f"{name} ({pipeline.bad[name]}) ended {outcome}")
        keep_going = case.category != "failfast"
        damaged = case.category in ("corrupt", "plant")
        if name in lost or (name in after_lost and outcome == "dependency_failed"):
            continue
        if keep_going and not damaged and name not in poisoned and outcome not in _OK:
            broken.append(f"{name} ended {outcome}: {entry and entry.get('error')}")
    return broken


def _died_under(entry: dict[str, Any] | None) -> bool:
    if entry is None or entry.get("outcome") != "failed":
        return False
    return "its worker died" in str(entry.get("error"))


def _ledger(folder: Path) -> dict[str, list[int]]:
    """Module -> the pids of the workers that started it, in order."""
    runs: dict[str, list[int]] = {}
    try:
        lines = (folder / "ledger.jsonl").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            name, pid = json.loads(line)
        except ValueError:
            continue
        runs.setdefault(name, []).append(pid)
    return runs


def _lost_twice(folder: Path, runs: dict[str, list[int]], died: set[int]) -> set[str]:
    """Modules that two killed workers held: they started it (the ledger) or claimed it.

    A worker killed after it claimed a module but before the module's body started counts as an
    executor death too (the fleet cannot tell the two apart), so the claims in the file store
    are read beside the ledger: each claim names the worker it took over from.
    """
    lost = {m: {pid for pid in pids if pid in died} for m, pids in runs.items()}
    root = folder / "store" / "runs"
    pid_of: dict[str, int] = {}
    for path in root.glob("*/workers/*"):
        try:
            record = json.loads(path.read_bytes())
            pid_of[str(record["worker"])] = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    for path in root.glob("*/claims/*/*"):
        try:
            gone = pid_of.get(str(json.loads(path.read_bytes()).get("takeover_from")))
        except (OSError, ValueError, AttributeError):
            continue
        if gone in died:
            lost.setdefault(path.parent.name, set()).add(gone)
    return {m for m, pids in lost.items() if len(pids) >= 2}


def _double_runs(runs: dict[str, list[int]], died: set[int]) -> list[str]:
    broken = []
    for name, pids in runs.items():
        again = [p for p in pids[:-1] if p not in died]
        if again:
            broken.append(f"{name} ran {len(pids)} times; pid {again[0]} was alive after its run")
    return broken


def _confinement(case: Case, folder: Path) -> list[str]:
    allowed = {"src", "outside", "workspaces", "store", "ledger.jsonl", "report.json"}
    broken = [f"{p.name} written outside the workspaces" for p in folder.iterdir()
              if p.name not in allowed]  # fmt: skip
    outside = sorted(p.name for p in (folder / "outside").iterdir())
    if outside != ["target.txt"]:
        broken.append(f"outside/ now holds {outside}")
    if found_in_files(folder / "store", f"outside-{case.seed}".encode()):
        broken.append("the store holds the content of a file outside the workspace")
    return broken


def _secrets(case: Case, folder: Path, text: str) -> list[str]:
    secret = case.secret
    broken = []
    if secret in text:
        broken.append("the secret is in a worker's output or the summary")
    try:
        if secret in (folder / "report.json").read_text():
            broken.append("the secret is in the report")
    except OSError:
        pass
    if found_in_files(folder / "store", secret.encode()):
        broken.append("the secret is in a record of the store")
    return broken


def found_in_files(root: Path, needle: bytes) -> bool:
    """Whether ``needle`` is in any file below ``root``, as it is or in a zstd frame inside."""
    import pyzstd

    for path in root.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if needle in data:
            return True
        at = data.find(_ZSTD)
        while at >= 0:
            try:
                if needle in pyzstd.ZstdDecompressor().decompress(data[at:]):
                    return True
            except pyzstd.ZstdError:
                pass
            at = data.find(_ZSTD, at + 1)
    return False
