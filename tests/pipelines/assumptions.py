"""A small pipeline for runs over GitHub's artifact service as configured: a fan-out and in."""

import sys

import ciflow

SLEEP = [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"]


@ciflow.module(cost=1)
def first(ctx: ciflow.Context) -> int:
    ctx.run([*SLEEP, "0.2"])
    return 1


@ciflow.module(depends_on=[first], cost=2)
def left(ctx: ciflow.Context, first: int) -> int:
    ctx.run([*SLEEP, "0.3"])
    return first + 1


@ciflow.module(depends_on=[first], cost=2)
def right(ctx: ciflow.Context, first: int) -> int:
    ctx.run([*SLEEP, "0.3"])
    return first + 2


@ciflow.module(depends_on=[left, right], cost=1)
def last(ctx: ciflow.Context, left: int, right: int) -> int:
    return left * 10 + right
