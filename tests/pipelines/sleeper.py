"""A module that sleeps in a subprocess tree until interrupted (the pid file tells the test)."""

import os
import sys

import ciflow

PIDS = os.environ.get("CIFLOW_TEST_PIDS", "pids.txt")
CHILD = (
    "import os, subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    f"open({PIDS!r}, 'a').write(f'{{os.getpid()}} {{g.pid}}\\n')\n"
    "time.sleep(300)\n"
)


@ciflow.module
def sleeps(ctx: ciflow.Context) -> None:
    ctx.run([sys.executable, "-c", CHILD])


@ciflow.module(depends_on=[sleeps], always_run=True)
def cleanup(ctx: ciflow.Context) -> None:
    ctx.log("cleanup ran")
