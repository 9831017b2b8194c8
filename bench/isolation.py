"""What running each module attempt in a child process would cost (the trust issue, item 4).

A module whose process dies (``os._exit``, a segfault, the OOM killer) takes its worker with it
today; the fleet bounds the damage by counting executor deaths (2, then the module fails). The
alternative is one child process per attempt, so that only the child dies. This script measures
the price of that isolation, per attempt, beside what ciflow does now (a thread of the worker's
pool), for a no-op module that returns a small result and for one that first imports a heavy
library the parent already imported (``pydantic``):

- ``thread``: ``ThreadPoolExecutor.submit`` (ciflow today).
- ``fork``: ``os.fork`` per attempt, the result pickled back over a pipe (cheap, but forking a
  process that runs threads - heartbeats, the pool - is unsafe: Python 3.12 warns).
- ``forkserver`` / ``spawn``: ``multiprocessing`` with those start methods, a new process per
  attempt (safe with threads; the child re-imports the module's code).

Run: ``python bench/isolation.py [--attempts 200]``. Prints milliseconds per attempt and the
ratio to ``thread``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def noop() -> dict[str, int]:
    return {"value": 1}


def heavy() -> dict[str, int]:
    import pydantic  # already imported by the parent, as a pipeline's own imports are

    return {"value": len(pydantic.VERSION)}


def _thread(fn: Callable[[], object], pool: ThreadPoolExecutor) -> object:
    return pool.submit(fn).result()


def _fork(fn: Callable[[], object]) -> object:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, send the result, leave without cleanup
        try:
            os.write(write, pickle.dumps(fn()))
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return pickle.loads(b"".join(chunks))


def _child(fn: Callable[[], object], conn: object) -> None:
    conn.send(fn())  # type: ignore[attr-defined]


def _process(fn: Callable[[], object], ctx: mp.context.BaseContext) -> object:
    parent, child = ctx.Pipe(duplex=False)  # type: ignore[attr-defined]
    proc = ctx.Process(target=_child, args=(fn, child))  # type: ignore[attr-defined]
    proc.start()
    child.close()
    value = parent.recv()
    proc.join()
    return value


def _time(run: Callable[[], object], attempts: int) -> float:
    """Median milliseconds per attempt, after one warm-up."""
    run()
    samples = []
    for _ in range(attempts):
        began = time.perf_counter()
        run()
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=200)
    args = parser.parse_args()
    import pydantic  # noqa: F401  (the parent has the pipeline's imports)

    pool = ThreadPoolExecutor(4)
    forkserver, spawn = mp.get_context("forkserver"), mp.get_context("spawn")
    rows = []
    for fn in (noop, heavy):
        ways: dict[str, Callable[[], object]] = {
            "thread (ciflow today)": lambda fn=fn: _thread(fn, pool),
            "fork per attempt": lambda fn=fn: _fork(fn),
            "forkserver per attempt": lambda fn=fn: _process(fn, forkserver),
            "spawn per attempt": lambda fn=fn: _process(fn, spawn),
        }
        base = None
        for name, run in ways.items():
            n = args.attempts if "spawn" not in name else max(10, args.attempts // 10)
            ms = _time(run, n)
            base = base or ms
            rows.append((fn.__name__, name, ms, ms / base))
    pool.shutdown()
    print(f"{'module':<7} {'how an attempt runs':<24} {'ms/attempt':>11} {'x thread':>9}")
    for module, name, ms, ratio in rows:
        print(f"{module:<7} {name:<24} {ms:>11.3f} {ratio:>9.0f}")


if __name__ == "__main__":
    main()
