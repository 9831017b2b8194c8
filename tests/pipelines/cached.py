"""Three modules, two of them cached: build (an input, an output), test (an input, env MODE,
build's result and output), report (not cached). Each appends its name to ran.log when it
really runs, so a test sees what ran and what came from the cache."""

from pathlib import Path

import ciflow


def _ran(ctx: ciflow.Context, name: str) -> None:
    with open(Path(ctx.workdir) / "ran.log", "a", encoding="utf-8") as fh:
        fh.write(name + "\n")


@ciflow.module(inputs=["src/a.txt"], outputs=["build/out.txt"], cache=True)
def build(ctx: ciflow.Context) -> str:
    _ran(ctx, "build")
    text = (Path(ctx.workdir) / "src" / "a.txt").read_text()
    (Path(ctx.workdir) / "build").mkdir(exist_ok=True)
    (Path(ctx.workdir) / "build" / "out.txt").write_text(text.upper())
    return text.strip().lower()


@ciflow.module(depends_on=[build], inputs=["src/b.txt"], cache=True, env=["MODE"])
def test(ctx: ciflow.Context, build: str) -> int:
    _ran(ctx, "test")
    shipped = (Path(ctx.workdir) / "build" / "out.txt").read_text()
    return len(build) + len((Path(ctx.workdir) / "src" / "b.txt").read_text()) + len(shipped)


@ciflow.module(depends_on=[test])
def report(ctx: ciflow.Context, test: int) -> None:
    _ran(ctx, "report")
    print(f"total {test}")
