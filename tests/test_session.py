"""The result cache in real runs: ``ciflow run`` and ``ciflow dry-run`` in subprocesses, on a
copy of tests/pipelines/cached.py with its input files, sharing one folder cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = Path(__file__).parent / "pipelines" / "cached.py"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A checkout: the pipeline file and its inputs."""
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    shutil.copy(PIPELINE, root / "ciflow.py")
    (root / "src" / "a.txt").write_text("hello\n")
    (root / "src" / "b.txt").write_text("b\n")
    return root


def ciflow(
    root: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("MODE", "TOKEN")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-P", "-m", "ciflow", *args, "-f", str(root / "ciflow.py")],
        cwd=root, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def run(root: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, object]]:
    """``ciflow run`` with a report; the report's modules by name (what ran is in ran.log)."""
    (root / "ran.log").unlink(missing_ok=True)
    report = root.parent / "report.json"
    proc = ciflow(root, "run", "--report", str(report), *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {m["name"]: m for m in json.loads(report.read_text())["modules"]}


def ran(root: Path) -> list[str]:
    log = root / "ran.log"
    return log.read_text().split() if log.exists() else []


def outcomes(modules: dict[str, dict[str, object]]) -> dict[str, object]:
    return {name: m["outcome"] for name, m in modules.items()}


def test_a_second_run_is_all_cached_and_restores_deleted_outputs(project: Path) -> None:
    first = run(project)
    assert outcomes(first) == {"build": "succeeded", "test": "succeeded", "report": "succeeded"}
    assert first["build"]["cache"] == "miss: no entry"
    shutil.rmtree(project / "build")
    second = run(project)
    assert outcomes(second) == {"build": "cached", "test": "cached", "report": "succeeded"}
    assert ran(project) == ["report"]
    assert (project / "build" / "out.txt").read_text() == "HELLO\n"
    assert second["build"]["cache"] == "hit" and second["test"]["result"] == first["test"]["result"]
    assert second["report"]["cache"] is None  # not a cache=True module
    before = (project / "build" / "out.txt").stat().st_mtime_ns
    assert outcomes(run(project))["build"] == "cached"
    assert (project / "build" / "out.txt").stat().st_mtime_ns == before  # already there: kept


def test_an_input_change_reruns_only_what_it_affects(project: Path) -> None:
    run(project)
    (project / "src" / "b.txt").write_text("changed\n")
    modules = run(project)
    assert ran(project) == ["test", "report"]
    assert modules["build"]["cache"] == "hit"
    assert modules["test"]["cache"] == "miss: input src/b.txt changed"


def test_early_cut_off_keeps_a_dependent_cached_when_its_dependency_gives_the_same(
    project: Path,
) -> None:
    run(project)
    (project / "src" / "a.txt").write_text("HELLO\n")  # same lower-case result, same output
    modules = run(project)
    assert ran(project) == ["build", "report"]
    assert modules["build"]["cache"] == "miss: input src/a.txt changed"
    assert modules["test"]["outcome"] == "cached"
    (project / "src" / "a.txt").write_text("other\n")  # another result: the dependent re-runs
    modules = run(project)
    assert ran(project) == ["build", "test", "report"]
    assert modules["test"]["cache"] == (
        "miss: dependency build's result changed, dependency build's outputs changed"
    )


def test_a_code_change_misses_but_a_comment_or_a_spec_tweak_does_not(project: Path) -> None:
    run(project)
    source = (project / "ciflow.py").read_text()
    tweaked = source.replace('    _ran(ctx, "test")\n', '    _ran(ctx, "test")  # a comment\n')
    tweaked = tweaked.replace('env=["MODE"])', 'env=["MODE"], retries=2)')
    (project / "ciflow.py").write_text(tweaked)
    assert outcomes(run(project))["test"] == "cached"
    (project / "ciflow.py").write_text(tweaked.replace("len(shipped)", "len(shipped) + 1"))
    modules = run(project)
    assert ran(project) == ["test", "report"]
    assert modules["test"]["cache"] == "miss: code changed"


def test_a_declared_env_change_misses_and_its_value_is_not_stored(project: Path) -> None:
    run(project, env={"MODE": "release-s3cr3t"})
    modules = run(project, env={"MODE": "debug"})
    assert modules["test"]["cache"] == "miss: env MODE changed"
    assert outcomes(run(project, env={"MODE": "debug"}))["test"] == "cached"
    cache = Path(os.environ["CIFLOW_CACHE"])
    assert not any(b"s3cr3t" in p.read_bytes() for p in cache.rglob("*") if p.is_file())


def test_rebuild_and_no_cache(project: Path) -> None:
    run(project)
    modules = run(project, "--rebuild", "build")
    assert ran(project) == ["build", "report"]  # build gives the same: test stays cached
    assert modules["build"]["cache"] == "miss: rebuild asked for (--rebuild)"
    modules = run(project, "--no-cache")
    assert ran(project) == ["build", "test", "report"]
    assert {m["cache"] for m in modules.values()} == {None}
    proc = ciflow(project, "run", "--rebuild", "nosuch")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ciflow: error: --rebuild names unknown module(s) nosuch; `ciflow list` shows them"
    ]


def test_a_corrupt_entry_is_a_miss_with_a_warning_and_is_replaced(project: Path) -> None:
    run(project)
    cache = Path(os.environ["CIFLOW_CACHE"])
    (data,) = (cache / "cache" / "1" / "build" / "data").iterdir()
    data.write_bytes(data.read_bytes()[:-5] + b"XXXXX")
    (project / "ran.log").unlink()
    proc = ciflow(project, "run")
    assert proc.returncode == 0, proc.stderr
    assert "cache: the entry of build cannot be used" in proc.stdout
    assert "payload checksum mismatch" in proc.stdout
    assert ran(project) == ["build", "report"]  # same result as before: test stays cached
    assert outcomes(run(project))["build"] == "cached"  # the broken entry was replaced


def test_the_summary_says_hit_or_miss_and_the_time_saved(project: Path) -> None:
    ciflow(project, "run")
    proc = ciflow(project, "run")
    assert proc.returncode == 0
    assert "  build: hit, saved " in proc.stdout
    assert "cache: 2 hit(s), 0 miss(es); hits saved " in proc.stdout
    assert "OK: 3 module(s): 2 cached, 1 succeeded" in proc.stdout


def test_explain_prints_the_key_parts_and_the_verdict(project: Path) -> None:
    proc = ciflow(project, "cache", "explain", "test")
    assert proc.returncode == 0, proc.stderr
    assert "dependency build: result none" in proc.stdout  # no entry of build yet
    assert "verdict   miss: no entry" in proc.stdout
    ciflow(project, "run")
    (project / "src" / "b.txt").write_text("new\n")
    lines = ciflow(project, "cache", "explain", "test").stdout.splitlines()
    assert "  src/b.txt  f " + lines[-3].split()[-1] in lines  # the file's digest is shown
    assert lines[-1] == "verdict   miss: input src/b.txt changed"
    assert any(line.startswith("env       MODE = sha256:") for line in lines)
    proc = ciflow(project, "cache", "explain", "nosuch")
    assert proc.returncode == 2 and "unknown module 'nosuch'" in proc.stderr


def test_dry_run_workers_share_one_file_cache(project: Path) -> None:
    first = ciflow(project, "dry-run", "--workers", "3")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "cache: 0 hit(s), 2 miss(es)" in first.stdout
    plan = ciflow(project, "plan", "--workers", "3")
    assert "expected cache hits (2): build, test" in plan.stdout
    assert "costs from cached: 2, history: 1" in plan.stdout
    second = ciflow(project, "dry-run", "--workers", "3")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "OK: 3 module(s): 2 cached, 1 succeeded" in second.stdout
    (project / "src" / "b.txt").write_text("changed\n")
    third = ciflow(project, "dry-run", "--workers", "3")
    assert "  test: miss: input src/b.txt changed" in third.stdout
    assert "  build: hit, saved " in third.stdout


def test_a_result_holding_a_registered_secret_is_not_stored(project: Path) -> None:
    source = (project / "ciflow.py").read_text()
    source = source.replace(
        "    return text.strip().lower()", '    ciflow.secret("TOKEN")\n    return text.strip()'
    )
    (project / "ciflow.py").write_text(source)
    proc = ciflow(project, "run", env={"TOKEN": "hello"})
    assert proc.returncode == 0
    assert "cache: build's result holds a registered secret; not stored" in proc.stdout
    assert outcomes(run(project, env={"TOKEN": "hello"}))["build"] == "succeeded"


def test_the_example_pipeline_takes_its_checks_and_build_from_the_cache_the_second_time(
    tmp_path: Path,
) -> None:
    root = tmp_path / "basic"
    shutil.copytree(Path(__file__).parent.parent / "examples" / "basic", root)
    first = ciflow(root, "run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "OK: 6 module(s): 5 succeeded, 1 skipped" in first.stdout
    second = ciflow(root, "run")
    assert "OK: 6 module(s): 3 cached, 2 succeeded, 1 skipped" in second.stdout, second.stdout
    # byte-compiling the sources wrote __pycache__ folders: excluded, so no miss
    assert any(root.rglob("__pycache__"))
    init = root / "src" / "calc" / "__init__.py"
    init.write_text(init.read_text() + "\n# a change that breaks nothing\n")
    third = ciflow(root, "run")
    assert "  build: miss: input src/calc/__init__.py changed" in third.stdout, third.stdout


def test_concurrent_runs_storing_the_same_entries_both_succeed(project: Path) -> None:
    other = project.parent / "other"
    shutil.copytree(project, other)
    procs = [
        subprocess.Popen(
            [sys.executable, "-P", "-m", "ciflow", "run", "-f", str(root / "ciflow.py")],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for root in (project, other)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert outcomes(run(project)) == {"build": "cached", "test": "cached", "report": "succeeded"}
    cache = Path(os.environ["CIFLOW_CACHE"])
    assert len(list((cache / "cache" / "1" / "build" / "data").iterdir())) == 1


def test_the_cache_lives_on_any_store(project: Path, any_store: tuple[str, dict[str, str]]) -> None:
    url, env = any_store
    environ = {"CIFLOW_CACHE": url, **env}
    first = run(project, env=environ)
    assert {m["cache"] for m in first.values()} == {"miss: no entry", None}
    shutil.rmtree(project / "build")
    second = run(project, env=environ)
    assert outcomes(second) == {"build": "cached", "test": "cached", "report": "succeeded"}
    assert (project / "build" / "out.txt").read_text() == "HELLO\n"
    plan = ciflow(project, "plan", "--workers", "2", env=environ)
    assert "expected cache hits (2): build, test" in plan.stdout, plan.stdout + plan.stderr
    assert "history: 1" in plan.stdout  # the durations the runs recorded in that store
