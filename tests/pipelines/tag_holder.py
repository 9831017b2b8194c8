"""`train` needs a `gpu` worker and becomes ready only after `first` (3 s) has run."""

import time

import ciflow


@ciflow.module()
def first(ctx: ciflow.Context) -> None:
    time.sleep(3)


@ciflow.module(depends_on=[first], requires=ciflow.Requires(tags=["gpu"]))
def train(ctx: ciflow.Context) -> None: ...
