"""`ciflow dry-run` as a real process: stopped by a signal, it stops its workers and cleans up."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_only_the_raiser_failed

PIPELINES = Path(__file__).parent / "pipelines"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stopped_dry_run_stops_its_workers_and_removes_its_folder(
    tmp_path: Path, sig: signal.Signals
) -> None:
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "CIFLOW_TEST_PIDS": str(pids), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow", "dry-run", "--workers", "2",
         "-f", str(PIPELINES / "sleeper.py")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids.exists(), "the module never started"
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "stopping 2 worker(s)" in out or "stopping 1 worker(s)" in out, out
    folder = re.search(r"worker\(s\) on file://(\S+)/store", out)
    assert folder is not None, out
    assert not Path(folder.group(1)).exists()
    child, grandchild = (int(p) for p in pids.read_text().split())
    for pid in (*workers, child, grandchild):
        assert not _alive(pid), f"pid {pid} outlived the dry-run"
    assert out.rstrip().endswith("ciflow: interrupted"), out


@pytest.mark.parametrize("where", ["sync", "async", "skip_if"])
@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("KeyboardInterrupt", "KeyboardInterrupt"),
        ("SystemExit", "SystemExit: 3"),
        ("GeneratorExit", "GeneratorExit: closed"),
        ("Custom", "Custom: custom base exception"),
    ],
)
def test_a_base_exception_of_a_module_fails_it_on_a_worker(
    tmp_path: Path, where: str, kind: str, reason: str
) -> None:
    """On a distributed worker too a module's BaseException is its failure: the worker goes on,
    its dependents are dependency_failed, the other slot's modules succeed, the run ends."""

    report = tmp_path / "report.json"
    env = {**os.environ, "CIFLOW_TEST_RAISE": kind, "CIFLOW_TEST_WHERE": where}
    proc = subprocess.run(
        [sys.executable, "-m", "ciflow", "dry-run", "--workers", "2", "-k",
         "--report", str(report), "-f", str(PIPELINES / "base_exceptions.py")],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_only_the_raiser_failed(report, reason)
    assert "interrupted" not in proc.stdout + proc.stderr


def test_outputs_matching_a_link_out_of_the_workspace_fail_the_module_not_its_worker(
    tmp_path: Path,
) -> None:
    """Packing refuses the link (to /etc/passwd); that fails the module with the reason, its
    dependent loses a dependency, the other slot's modules succeed, no worker crashes."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ciflow", "dry-run", "--workers", "2", "-k",
         "--report", str(report), "-f", str(PIPELINES / "outputs_link_out.py")],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    modules = {m["name"]: m for m in json.loads(report.read_text())["modules"]}
    assert {name: m["outcome"] for name, m in modules.items()} == {
        "packs_a_link": "failed",
        "needs_it": "dependency_failed",
        "bystander": "succeeded",
    }
    assert "symlink to /etc/passwd, outside the workspace" in modules["packs_a_link"]["error"]
    assert "Traceback" not in out
    assert "[packs_a_link] failed" in out  # its log line too, not only the summary
    codes = re.search(r"worker exit codes: \[(\d+), (\d+)\]", out)
    assert codes is not None, out
    # every worker reports the run's failure (so "Re-run failed jobs" re-runs all of them)
    assert codes.groups() == ("1", "1")


def test_a_module_that_runs_alone_runs_alone_on_every_store(
    any_store: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = any_store
    log = tmp_path / "log.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    environ.update(env, CIFLOW_TEST_LOG=str(log))
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "ciflow", "dry-run", "--workers", "4", "--jobs", "1",
         "--store", url, "-f", str(PIPELINES / "alone.py")],
        capture_output=True, text=True, env=environ, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "OK: 6 module(s): 6 succeeded" in proc.stdout
    spans: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        name, what, at = json.loads(line)
        spans.setdefault(name, {})[what] = at
    solo = spans["migrate"]
    for name, span in spans.items():
        if name != "migrate":
            assert span["end"] <= solo["start"] or solo["end"] <= span["start"], (name, spans)


def test_a_retry_inside_a_worker_is_the_attempt_everywhere(tmp_path: Path) -> None:
    """ctx.attempt, the summary's attempts column and the report agree, as in `ciflow run`."""
    file = tmp_path / "flaky.py"
    file.write_text(
        "import ciflow\n\n"
        "@ciflow.module(retries=2, retry_delay=0)\n"
        "def flaky(ctx) -> int:\n"
        "    if ctx.attempt < 2:\n"
        "        raise RuntimeError('first attempt fails')\n"
        "    return ctx.attempt\n"
    )
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ciflow", "dry-run", "--workers", "2", "--report", str(report),
         "-f", str(file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (module,) = json.loads(report.read_text())["modules"]
    assert module["attempts"] == 2 and module["result"] == 2
    row = next(
        line.split() for line in proc.stdout.splitlines() if line.strip().startswith("flaky")
    )
    assert row[1] == "succeeded" and row[5] == "2", proc.stdout
