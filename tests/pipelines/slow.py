"""A quick module, then one that sleeps in-process long enough for its worker to be killed."""

import time

import ciflow


@ciflow.module
def quick(ctx: ciflow.Context) -> int:
    return 1


@ciflow.module(depends_on=[quick])
def slow(ctx: ciflow.Context, quick: int) -> int:
    time.sleep(60)
    return quick
