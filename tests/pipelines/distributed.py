"""A pipeline for distributed runs: sleeps in subprocesses, a result chain, a shared key."""

import sys

import ciflow

SLEEP = [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))"]


@ciflow.module(cost=1)
def prepare(ctx: ciflow.Context) -> int:
    ctx.run([*SLEEP, "0.3"])
    return 1


@ciflow.module(depends_on=[prepare], cost=1, not_in_parallel="db")
def unit_a(ctx: ciflow.Context, prepare: int) -> int:
    ctx.run([*SLEEP, "0.4"])
    return prepare + 1


@ciflow.module(depends_on=[prepare], cost=1, not_in_parallel="db")
def unit_b(ctx: ciflow.Context, prepare: int) -> int:
    ctx.run([*SLEEP, "0.4"])
    return prepare + 2


@ciflow.module(depends_on=[prepare], cost=1)
def unit_c(ctx: ciflow.Context) -> None:
    ctx.run([*SLEEP, "0.4"])


@ciflow.module(depends_on=[unit_a, unit_b, unit_c], cost=1)
def report(ctx: ciflow.Context, unit_a: int, unit_b: int) -> int:
    ctx.log(f"total {unit_a + unit_b}")
    return unit_a + unit_b
