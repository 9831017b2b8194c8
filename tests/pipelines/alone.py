"""Six modules over four workers; `migrate` runs alone (not_in_parallel=True): nothing else may
run anywhere while it does. Each module appends `[name, "start"|"end", time]` lines to
$CIFLOW_TEST_LOG."""

import json
import os
import time

import ciflow


def _mark(name: str, what: str) -> None:
    with open(os.environ["CIFLOW_TEST_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps([name, what, time.time()]) + "\n")


def _work(name: str, seconds: float) -> None:
    _mark(name, "start")
    time.sleep(seconds)
    _mark(name, "end")


@ciflow.module
def a() -> None:
    _work("a", 0.4)


@ciflow.module
def b() -> None:
    _work("b", 0.4)


@ciflow.module(depends_on=[a], not_in_parallel=True)
def migrate() -> None:
    _work("migrate", 0.6)


@ciflow.module
def c() -> None:
    _work("c", 0.8)


@ciflow.module(depends_on=[b])
def d() -> None:
    _work("d", 0.8)


@ciflow.module(depends_on=[migrate, c, d])
def e() -> None:
    _work("e", 0.1)
