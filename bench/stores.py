"""Every store backend side by side on the same work, in one run.

Stores: ``file://`` (a temporary folder), ``redis://`` (a real ``redis-server`` started for the
run), ``s3://`` (moto's S3 API server) and ``http://`` (``ciflow serve``), each started on
127.0.0.1 by the same helpers the tests use (``tests/redis_server.py``, ``tests/s3_server.py``,
``tests/test_store_http.py``). Per store:

1. **latency** of ``create`` (100 B), ``get``, ``list`` (a prefix holding 100 keys) and the
   **hand-off** (one client blocks in ``wait`` on a prefix, another creates a key there: from
   the create call to ``wait`` returning), p50/p95 over ``--samples`` operations;
2. **throughput** of 1,000 small creates from 8 processes (creates per second);
3. a ``--blob-mb`` (default 1024) blob up (``create_from_file``) and down (``get_to_file``) in
   a child process: MB/s each way and the child's peak RSS (``VmHWM``: ``ru_maxrss`` would
   carry the bench process's own peak over from the fork);
4. ``ciflow dry-run --workers 4 --store URL`` on an STG graph (``bench/distributed.py``'s
   sleep pipelines): wall (first module start to last end, from the modules' log) over the
   plan's lower bound;
5. for ``http://`` only: 64 clients (threads of 8 processes) long-polling ``wait`` on one
   prefix while another process creates a key there every 50 ms (each create wakes them all):
   create latency p50/p95.

Targets: hand-off p50 <= 5 ms (redis) and <= 10 ms (http); peak RSS <= 100 MB for the blob on
every store; ``ciflow serve`` with 64 long-pollers: create p95 <= 50 ms.

    python bench/stores.py                       # every store, 1 GiB blob
    python bench/stores.py --stores file,redis --blob-mb 64 --skip-dry-run
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

HANDOFF_TARGET = {"redis": 5.0, "http": 10.0}  # ms, p50
RSS_TARGET_MB = 100.0
SERVE_P95_TARGET = 50.0  # ms, creates with 64 long-pollers
STORES = ("file", "redis", "s3", "http")

Started = Iterator[tuple[str, dict[str, str]]]


# ------------------------------------------------------------------ starting each store


@contextlib.contextmanager
def _file(tmp: Path) -> Started:
    yield f"file://{tmp / 'file-store'}", {}


@contextlib.contextmanager
def _http(tmp: Path) -> Started:
    """``ciflow serve`` as the tests start it (tests/test_store_http.py), access log off."""
    from test_store_http import RW, serve

    tmp.mkdir(parents=True, exist_ok=True)
    served = serve(tmp, "--no-access-log")
    try:
        yield served.url, {"CIFLOW_STORE_TOKEN": RW}
    finally:
        served.stop()


@contextlib.contextmanager
def _s3(tmp: Path) -> Started:
    """moto's S3 API server as the tests start it (tests/s3_server.py), one bucket."""
    from s3_server import MotoServer, aws_env, client

    with MotoServer() as server:
        client(server.url).create_bucket(Bucket="bench")
        yield "s3://bench/ciflow", aws_env(server.url)


@contextlib.contextmanager
def _redis(tmp: Path) -> Started:
    """A real ``redis-server`` as the tests start it (tests/redis_server.py)."""
    from redis_server import redis_server

    with redis_server(tmp) as server:
        yield server.url(), {}


STARTERS: dict[
    str, Callable[[Path], contextlib.AbstractContextManager[tuple[str, dict[str, str]]]]
] = {
    "file": _file,
    "redis": _redis,
    "s3": _s3,
    "http": _http,
}


# ------------------------------------------------------------------ figures


@dataclass
class Figures:
    store: str
    url: str = ""
    create: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    list_: list[float] = field(default_factory=list)
    handoff: list[float] = field(default_factory=list)
    creates_per_s: float = 0.0
    up_mb_s: float = 0.0
    down_mb_s: float = 0.0
    rss_mb: float = 0.0
    blob_mb: int = 0
    dry_wall: float = 0.0
    dry_lb: float = 0.0
    dry_code: int | None = None
    poll_create: list[float] = field(default_factory=list)
    pollers: int = 0
    error: str | None = None


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _open(url: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    os.environ.update(env)
    from ciflow.stores import open_store

    return open_store(url)


def latencies(fig: Figures, url: str, env: dict[str, str], samples: int) -> None:
    """Part 1: create, get, list and hand-off latencies, in ms."""
    store, other = _open(url, env), _open(url, env)
    base = f"bench/{uuid.uuid4().hex[:8]}"
    value = os.urandom(100)
    for i in range(samples):
        t = time.perf_counter()
        store.create(f"{base}/c/{i:05d}", value)
        fig.create.append((time.perf_counter() - t) * 1e3)
    for i in range(samples):
        t = time.perf_counter()
        store.get(f"{base}/c/{i % samples:05d}")
        fig.get.append((time.perf_counter() - t) * 1e3)
    for i in range(100):
        store.create(f"{base}/l/{i:03d}", value)
    for _ in range(samples):
        t = time.perf_counter()
        store.list(f"{base}/l/")
        fig.list_.append((time.perf_counter() - t) * 1e3)
    for i in range(min(samples, 100)):
        took = _handoff(store, other, f"{base}/h{i:03d}/", value)
        if took is not None:
            fig.handoff.append(took)
    store.close()
    other.close()


def _handoff(store, other, prefix: str, value: bytes) -> float | None:  # type: ignore[no-untyped-def]
    """ms from ``store.create`` of a key under ``prefix`` to ``other.wait`` returning."""
    ready, done = threading.Event(), threading.Event()
    got: list[float] = []

    def waiter() -> None:
        ready.set()
        other.wait(prefix, (), timeout=5.0)
        got.append(time.perf_counter())
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait()
    time.sleep(0.02)  # the waiter is inside wait()
    t = time.perf_counter()
    store.create(f"{prefix}k", value)
    done.wait(10)
    thread.join()
    return (got[0] - t) * 1e3 if got else None


def _creator(url: str, env: dict[str, str], base: str, n: int, start: float) -> None:
    store = _open(url, env)
    while time.time() < start:
        time.sleep(0.001)
    for i in range(n):
        store.create(f"{base}/{os.getpid()}-{i:04d}", b"x" * 100)
    store.close()


def throughput(fig: Figures, url: str, env: dict[str, str]) -> None:
    """Part 2: 1,000 creates from 8 processes."""
    base = f"bench/{uuid.uuid4().hex[:8]}/tp"
    start = time.time() + 1.0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_creator, args=(url, env, base, 125, start)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.time() - start
    fig.creates_per_s = 1000 / elapsed if elapsed > 0 else float("nan")


_BLOB_CHILD = """
import os, resource, sys, time
os.environ.update(dict(a.split('=', 1) for a in sys.argv[4:]))
from ciflow.stores import open_store
store = open_store(sys.argv[1])
src, dest = sys.argv[2], sys.argv[3]
key = 'bench/blob-' + os.urandom(4).hex()
size = os.path.getsize(src)
t = time.perf_counter(); store.create_from_file(key, __import__('pathlib').Path(src))
up = time.perf_counter() - t
t = time.perf_counter(); store.get_to_file(key, __import__('pathlib').Path(dest))
down = time.perf_counter() - t
assert os.path.getsize(dest) == size
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent across exec
hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
print(size / up / 1e6, size / down / 1e6, hwm / 1024)
"""


def blob(fig: Figures, url: str, env: dict[str, str], tmp: Path, mb: int) -> None:
    """Part 3: a ``mb`` MiB blob up and down in a child process; peak RSS."""
    src, dest = tmp / "blob.src", tmp / "blob.dest"
    if not src.exists() or src.stat().st_size != mb << 20:
        with src.open("wb") as fh:
            for _ in range(mb):
                fh.write(os.urandom(1 << 20))
    args = [f"{k}={v}" for k, v in env.items()]
    out = subprocess.run(
        [sys.executable, "-P", "-c", _BLOB_CHILD, url, str(src), str(dest), *args],
        capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    dest.unlink(missing_ok=True)
    if out.returncode != 0:
        raise RuntimeError(f"blob child failed: {out.stderr.strip().splitlines()[-1:]}")
    up, down, rss = (float(x) for x in out.stdout.split())
    fig.up_mb_s, fig.down_mb_s, fig.rss_mb, fig.blob_mb = up, down, rss, mb


def dry_run(
    fig: Figures, url: str, env: dict[str, str], tmp: Path, graph: str, scale: float
) -> None:
    """Part 4: ``ciflow dry-run --workers 4 --store URL`` on an STG graph; wall / lower bound."""
    import distributed as dist  # bench/distributed.py

    from ciflow.model.module import reset_registry
    from ciflow.model.pipeline import load_pipeline
    from ciflow.planning.planner import RunnerPool, plan_pipeline

    g = dist.read_graph(dist.stg_dir(), graph)
    work = tmp / f"dry-{fig.store}"
    work.mkdir(parents=True, exist_ok=True)
    pipeline_file = work / "pipeline.py"
    pipeline_file.write_text(dist.pipeline_source(g, scale))
    log = work / "modules.log"
    reset_registry()
    lower = plan_pipeline(load_pipeline(pipeline_file), [RunnerPool(count=4)]).lower_bound
    cmd = [sys.executable, "-P", "-m", "ciflow", "dry-run", "--workers", "4", "--jobs", "1",
           "-f", str(pipeline_file), "--store", url, "--no-cache"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=work, env={**dist.subprocess_env(log), **env}, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    fig.dry_code = proc.returncode
    runs = dist.read_log(log)
    starts = [r["start"] for r in runs.values() if "start" in r]
    ends = [r["end"] for r in runs.values() if "end" in r]
    if starts and ends:
        fig.dry_wall, fig.dry_lb = max(ends) - min(starts), lower


def _pollers(url: str, env: dict[str, str], prefix: str, threads: int, until: float) -> None:
    """One process of long-polling clients (a thread each), until the wall clock ``until``."""

    def poll() -> None:
        store, known = _open(url, env), []
        while time.time() < until:
            known = store.wait(prefix, known, timeout=min(2.0, max(0.1, until - time.time())))
        store.close()

    pool = [threading.Thread(target=poll) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def long_pollers(fig: Figures, url: str, env: dict[str, str], clients: int, samples: int) -> None:
    """Part 5 (http): ``clients`` long-polling clients in 8 processes while another process
    creates keys under the prefix they wait on (each create wakes them all), one every 50 ms."""
    prefix = f"bench/{uuid.uuid4().hex[:8]}/lp/"
    fig.pollers = clients
    until = time.time() + 3.0 + samples * 0.05 + 2.0
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_pollers, args=(url, env, prefix, n, until))
             for n in _split(clients, 8)]  # fmt: skip
    for p in procs:
        p.start()
    time.sleep(3.0)  # every client is inside wait()
    writer = _open(url, env)
    for i in range(samples):
        t0 = time.perf_counter()
        writer.create(f"{prefix}{i:05d}", b"x")
        fig.poll_create.append((time.perf_counter() - t0) * 1e3)
        time.sleep(0.05)
    writer.close()
    for p in procs:
        p.join(timeout=30)


def _split(total: int, parts: int) -> list[int]:
    return [
        n for n in (total // parts + (1 if i < total % parts else 0) for i in range(parts)) if n
    ]


# ------------------------------------------------------------------ the table


def _ms(values: Sequence[float]) -> str:
    return f"{pct(values, 50):7.2f} {pct(values, 95):7.2f}" if values else f"{'-':>7} {'-':>7}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_tables(figs: list[Figures]) -> None:
    measured = [f for f in figs if not f.error]
    base = next((f for f in measured if f.store == "file" and f.handoff), None)
    print("\n(1) latency, ms (p50 p95); x file = p50 / the file store's p50")
    head = ["store", "create", "get", "list 100", "hand-off"]
    print(
        f"  {head[0]:6} " + " ".join(f"{h:>15}" for h in head[1:]) + "  x file (create, hand-off)"
    )
    for f in figs:
        if f.error:
            print(f"  {f.store:6} error: {f.error}")
            continue
        ratio = ""
        if base is not None:
            c = pct(f.create, 50) / pct(base.create, 50)
            ratio = f"{c:.2f}, {pct(f.handoff, 50) / pct(base.handoff, 50):.2f}"
        cells = " ".join(_ms(v) for v in (f.create, f.get, f.list_, f.handoff))
        print(f"  {f.store:6} {cells}  {ratio}")
    print("\n(2) 1,000 creates from 8 processes; (3) blob up and down; (4) dry-run --workers 4")
    cols = ["creates/s", "MiB", "up MB/s", "down MB/s", "peak RSS MB", "dry wall s", "LB s"]
    print(f"  {'store':6} " + " ".join(f"{c:>11}" for c in [*cols, "wall/LB"]))
    for f in measured:
        ratio = f.dry_wall / f.dry_lb if f.dry_lb else float("nan")
        code = "" if f.dry_code in (0, None) else f" (exit {f.dry_code})"
        values = [f"{f.creates_per_s:11.0f}", f"{f.blob_mb:11d}", f"{f.up_mb_s:11.0f}",
                  f"{f.down_mb_s:11.0f}", f"{f.rss_mb:11.1f}", f"{f.dry_wall:11.2f}",
                  f"{f.dry_lb:11.2f}", f"{ratio:11.3f}"]  # fmt: skip
        print(f"  {f.store:6} " + " ".join(values) + code)
    http = next((f for f in measured if f.poll_create), None)
    if http is not None:
        p50, p95 = pct(http.poll_create, 50), pct(http.poll_create, 95)
        print(f"\n(5) ciflow serve, {http.pollers} clients long-polling: create p50 {p50:.2f} ms,"
              f" p95 {p95:.2f} ms")  # fmt: skip
    print("\ntargets")
    for f in figs:
        if f.error:
            print(f"  {f.store}: not measured  MISS")
            continue
        if f.store in HANDOFF_TARGET:
            t, p = HANDOFF_TARGET[f.store], pct(f.handoff, 50)
            print(f"  {f.store} hand-off p50 {p:.2f} ms vs <= {t:g} ms  {_verdict(p <= t)}")
        if f.blob_mb:
            ok = f.rss_mb <= RSS_TARGET_MB
            print(f"  {f.store} {f.blob_mb} MiB blob: peak RSS {f.rss_mb:.1f} MB"
                  f" vs <= {RSS_TARGET_MB:g} MB  {_verdict(ok)}")  # fmt: skip
    if http is not None:
        p = pct(http.poll_create, 95)
        print(f"  http create p95 with {http.pollers} long-pollers {p:.2f} ms"
              f" vs <= {SERVE_P95_TARGET:g} ms  {_verdict(p <= SERVE_P95_TARGET)}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default=",".join(STORES), help="comma list (default: all)")
    parser.add_argument("--samples", type=int, default=200, help="operations per latency figure")
    parser.add_argument("--blob-mb", type=int, default=1024, help="blob size in MiB (1024)")
    parser.add_argument("--skip-blob", action="store_true")
    parser.add_argument("--skip-dry-run", action="store_true")
    parser.add_argument("--graph", default="50/rand0000.stg", help="STG graph for the dry-run")
    parser.add_argument("--scale", type=float, default=0.05, help="seconds per STG time unit")
    parser.add_argument("--pollers", type=int, default=64, help="long-polling clients (http)")
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args(argv)
    kinds = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(kinds) - set(STORES))
    if unknown:
        parser.error(f"unknown store(s) {unknown}; known: {', '.join(STORES)}")
    figs: list[Figures] = []
    began = time.time()
    with tempfile.TemporaryDirectory(prefix="ciflow-bench-stores-", dir=args.tmp) as scratch:
        tmp = Path(scratch)
        for kind in kinds:
            fig = Figures(kind)
            figs.append(fig)
            saved = dict(os.environ)
            try:
                with STARTERS[kind](tmp / kind) as (url, env):
                    fig.url = url
                    print(f"{kind}: {url}", flush=True)
                    latencies(fig, url, env, args.samples)
                    throughput(fig, url, env)
                    if not args.skip_blob:
                        blob(fig, url, env, tmp, args.blob_mb)
                    if not args.skip_dry_run:
                        dry_run(fig, url, env, tmp, args.graph, args.scale)
                    if kind == "http":
                        long_pollers(fig, url, env, args.pollers, args.samples)
            except Exception as exc:  # noqa: BLE001 - a store that cannot be measured is reported
                fig.error = f"{type(exc).__name__}: {exc}"
            finally:
                os.environ.clear()
                os.environ.update(saved)
    print_tables(figs)
    python = sys.version.split()[0]
    print(f"\nbench took {time.time() - began:.0f} s; {os.cpu_count()} CPUs, Python {python}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
