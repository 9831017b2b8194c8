"""A run that fails once: build (ships out/build.txt) -> test (reads it; fails while $FLAKY is
set) -> report (also needs lint). Each module appends its name to ran.log in its workspace
when it runs, so a test sees what every attempt ran where."""

import os
from pathlib import Path

import ciflow


def _ran(ctx: ciflow.Context, name: str) -> None:
    with open(Path(ctx.workdir) / "ran.log", "a", encoding="utf-8") as fh:
        fh.write(name + "\n")


@ciflow.module(outputs=["out/build.txt"])
def build(ctx: ciflow.Context) -> str:
    _ran(ctx, "build")
    (Path(ctx.workdir) / "out").mkdir(exist_ok=True)
    (Path(ctx.workdir) / "out" / "build.txt").write_text("built once")
    return "v1"


@ciflow.module()
def lint(ctx: ciflow.Context) -> int:
    _ran(ctx, "lint")
    return 1


@ciflow.module(depends_on=[build])
def test(ctx: ciflow.Context, build: str) -> int:
    _ran(ctx, "test")
    if os.environ.get("FLAKY"):
        raise RuntimeError("flaky test failed")
    return len((Path(ctx.workdir) / "out" / "build.txt").read_text()) + len(build)


@ciflow.module(depends_on=[test, lint])
def report(ctx: ciflow.Context, test: int, lint: int) -> int:
    _ran(ctx, "report")
    return test + lint
