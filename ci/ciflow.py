"""ciflow's own CI as a ciflow pipeline: lint, types and the test suite in a few groups.

`.github/workflows/ci.yml` plans it over a matrix of runners and runs each slot with ciflow's
action. The modules install nothing: every runner installs ciflow with its test extra
(`pip install -e '.[test]'`) and the npm clients of the emulator tests
(`npm ci --prefix tests/js`) before its worker starts, because any module may run on any runner.

Locally, after those two installs: `ciflow run -f ci/ciflow.py`, or
`ciflow dry-run --workers 3 --shared-workdir -f ci/ciflow.py` (the commands run at the
repository root, the folder above this one, so the workers must share it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ciflow

PY = sys.executable

# The test files of each group (globs in tests/); every other tests/test_*.py runs in
# "tests-rest", so a new test file is never left out.
GROUPS: dict[str, tuple[str, ...]] = {
    "tests-worker": ("test_worker*.py", "test_registry*.py"),
    "tests-stores": (
        "test_store*.py",
        "test_github*.py",
        "test_emulator*.py",
        "test_blob*.py",
        "test_archive*.py",
    ),
    "tests-engine-cli": (
        "test_engine*.py",
        "test_cli*.py",
        "test_process*.py",
        "test_context*.py",
        "test_console*.py",
    ),
    "tests-planner": ("test_planner*.py", "test_schedule*.py", "test_graph*.py"),
}
REST = "tests-rest"

# Predicted seconds on a GitHub-hosted runner, for the plan of a run without history.
COSTS = {
    "tests-worker": 45.0,
    "tests-stores": 60.0,
    "tests-engine-cli": 15.0,
    "tests-planner": 10.0,
    REST: 8.0,
}

# Variables of the CI job that must not reach the tests: with them, the ciflow under test would
# join this very run's store, or write into this job's outputs and step summary.
JOB_VARIABLES = (
    "GITHUB_OUTPUT",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_ENV",
    "GITHUB_PATH",
    "GITHUB_STATE",
    "ACTIONS_RESULTS_URL",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_RUNTIME_URL",
    "ACTIONS_CACHE_URL",
    "ACTIONS_CACHE_SERVICE_V2",
)

# The lint and types modules below run what these two tests run.
DESELECT = (
    "tests/test_quality.py::test_mypy_strict_is_clean",
    "tests/test_quality.py::test_ruff_is_clean",
)


def repo_root(start: Path) -> Path:
    """The repository root: the nearest folder at or above `start` with ciflow's pyproject."""
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "ciflow").is_dir():
            return folder
    raise RuntimeError(
        f"no ciflow checkout at or above {start}: "
        "run from a checkout (dry-run needs --shared-workdir)"
    )


def test_files(root: Path) -> dict[str, list[str]]:
    """Each group's test files (paths relative to `root`), and the rest under REST."""
    tests = root / "tests"
    every = sorted(p.name for p in tests.glob("test_*.py"))
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()
    for name, patterns in GROUPS.items():
        files = sorted({p.name for pattern in patterns for p in tests.glob(pattern)} - taken)
        taken.update(files)
        groups[name] = [f"tests/{f}" for f in files]
    groups[REST] = [f"tests/{f}" for f in every if f not in taken]
    return groups


def _pytest(group: str) -> ciflow.Module:
    def run_tests(ctx: ciflow.Context) -> None:
        root = repo_root(ctx.workdir)
        files = test_files(root)[group]
        if not files:
            ctx.log(f"no test files in {group}")
            return
        for name in [*JOB_VARIABLES, *(n for n in ctx.env if n.startswith("CIFLOW_"))]:
            ctx.env.pop(name, None)
        deselect = [arg for node in DESELECT for arg in ("--deselect", node)]
        ctx.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *deselect, *files], cwd=root)

    run_tests.__name__ = run_tests.__qualname__ = group.replace("-", "_")
    requires = ciflow.Requires(tools=["node"]) if group == "tests-stores" else None
    return ciflow.module(
        name=group, category="test", cost=COSTS[group], timeout=900, requires=requires
    )(run_tests)


@ciflow.module(category="check", cost=3, timeout=300)
def lint(ctx: ciflow.Context) -> None:
    """ruff, with the rules of pyproject.toml, over the whole repository."""
    ctx.run([PY, "-m", "ruff", "check", "."], cwd=repo_root(ctx.workdir))


@ciflow.module(category="check", cost=30, timeout=600)
def types(ctx: ciflow.Context) -> None:
    """mypy --strict over the package."""
    ctx.run([PY, "-m", "mypy", "--strict", "ciflow"], cwd=repo_root(ctx.workdir))


for _group in (*GROUPS, REST):
    _pytest(_group)
