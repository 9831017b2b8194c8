"""Example pipeline: lint, build, unit tests, an integration test of the build, publish.

Run it with `ciflow run -f examples/basic/ciflow.py`. It needs nothing but Python: the
"build" zips the package, the "integration test" imports it from that zip. Run it twice: the
second run takes lint, the unit tests and the build from the result cache (`.ciflow/cache`).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from pydantic import BaseModel

import ciflow

PY = sys.executable


class Package(BaseModel):
    """What the build hands to its dependents."""

    path: str
    version: str
    files: int


# What the checks and the build read: the result cache skips them while these files are the same
# (byte-compiling writes __pycache__ folders, which are not inputs).
SOURCES = ["src/**", "!**/__pycache__"]


@ciflow.module(category="check", inputs=[*SOURCES, "tests/**"], cache=True)
def lint(ctx: ciflow.Context) -> None:
    """Byte-compile every source file: a syntax error fails the pipeline early."""
    ctx.run([PY, "-m", "compileall", "-q", "src", "tests"])


@ciflow.module(category="check", timeout=300, inputs=[*SOURCES, "tests/**"], cache=True)
def unit_tests(ctx: ciflow.Context) -> None:
    ctx.run([PY, "-m", "unittest", "discover", "-s", "tests", "-v"])


@ciflow.module(category="build", inputs=SOURCES, outputs=["dist/*.zip"], cost=2, cache=True)
def build(ctx: ciflow.Context) -> Package:
    """Package src/calc into dist/calc-<version>.zip."""
    version = ctx.run(
        [PY, "-c", "import sys; sys.path.insert(0, 'src'); import calc; print(calc.__version__)"],
        capture=True,
        quiet=True,
    ).output.strip()
    dist = ctx.workdir / "dist"
    dist.mkdir(exist_ok=True)
    archive = dist / f"calc-{version}.zip"
    sources = sorted((ctx.workdir / "src").rglob("*.py"))
    with zipfile.ZipFile(archive, "w") as zf:
        for source in sources:
            zf.write(source, source.relative_to(ctx.workdir / "src"))
    ctx.log(f"built {archive.name} with {len(sources)} file(s)")
    return Package(path=str(archive.relative_to(ctx.workdir)), version=version, files=len(sources))


@ciflow.module(depends_on=[build, unit_tests], category="test", retries=1, retry_delay=0.5)
def integration_tests(ctx: ciflow.Context, build: Package) -> None:
    """Import the built package from its archive and use it."""
    check = "import calc; assert calc.add(2, 3) == 5; print('calc', calc.__version__, 'works')"
    ctx.run([PY, "-c", check], env={"PYTHONPATH": str(Path(ctx.workdir, build.path))})


@ciflow.module(
    depends_on=[lint, integration_tests],
    skip_if=ciflow.not_on_branch("main") | ~ciflow.env_set("PUBLISH_TOKEN"),
    category="release",
)
def publish(ctx: ciflow.Context) -> None:
    """Runs only on main with PUBLISH_TOKEN set (skipped everywhere else)."""
    token = ciflow.secret("PUBLISH_TOKEN")
    ctx.log(f"would upload with token {token}")


@ciflow.module(depends_on=[publish], always_run=True, category="release")
def clean(ctx: ciflow.Context) -> None:
    """Always runs, even after a failure: remove the build output."""
    for archive in (ctx.workdir / "dist").glob("*.zip"):
        ctx.log(f"keeping {archive.name} for inspection")
