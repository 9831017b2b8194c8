"""One failing module, a dependent, an unrelated slow module and an always_run cleanup."""

import sys

import ciflow


@ciflow.module
def fails(ctx: ciflow.Context) -> None:
    ctx.run([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])


@ciflow.module(depends_on=[fails])
def after(ctx: ciflow.Context) -> None: ...


@ciflow.module
def independent(ctx: ciflow.Context) -> None:
    ctx.run([sys.executable, "-c", "import time; time.sleep(0.3)"])


@ciflow.module(depends_on=[after], always_run=True)
def cleanup(ctx: ciflow.Context) -> None:
    ctx.log("cleaning up")
