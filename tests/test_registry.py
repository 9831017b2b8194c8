from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import (
    EVIDENCE,
    HeartbeatThread,
    Liveness,
    finished_workers,
    read_registrations,
    register,
)
from ciflow.model.requirements import Capabilities
from ciflow.stores import open_store
from ciflow.stores.base import StoreError

CAPS = Capabilities(os="linux", arch="x86_64", tools=frozenset({"git"}), tags=frozenset({"gpu"}))


def test_register_and_read_back(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    keys = RunKeys("r1")
    register(store, keys, "w1", 1, CAPS, runs_on="ubuntu-latest")
    register(store, keys, "w0", 0, CAPS)
    regs = read_registrations(store, keys)
    assert [(r.worker, r.slot) for r in regs] == [("w0", 0), ("w1", 1)]
    assert (
        regs[1].tools == ["git"] and regs[1].tags == ["gpu"] and regs[1].runs_on == "ubuntu-latest"
    )
    with pytest.raises(StoreError, match="a worker named 'w0' is already registered in run r1"):
        register(store, keys, "w0", 0, CAPS)


def test_32_processes_registering_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    code = (
        "import sys, time\n"
        "from ciflow.model.requirements import Capabilities\n"
        "from ciflow.distributed.keys import RunKeys\n"
        "from ciflow.distributed.liveness import register\n"
        "from ciflow.stores import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "go = float(sys.argv[3])\n"
        "time.sleep(max(0.0, go - time.time()))\n"
        "register(store, RunKeys('crowd'), f'w{sys.argv[2]}', int(sys.argv[2]),\n"
        "         Capabilities.detect())\n"
    )
    go = time.time() + 3.0  # start together once every interpreter is up
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(i), str(go)]) for i in range(32)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 32
    regs = read_registrations(open_store(url), RunKeys("crowd"))
    assert sorted(r.slot for r in regs) == list(range(32))


def test_heartbeats_keep_only_the_newest_and_liveness_sees_silence(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}")
    keys = RunKeys("beats")
    beats = HeartbeatThread(store, keys, "w0", interval=0.05)
    beats.beat()
    beats.start()
    liveness = Liveness(store, keys, timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while beats.seq < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        liveness.refresh()
        assert liveness.dead(["w0", "w-never"]) == set()  # first sight starts the clock
        assert len(store.list(keys.alive_prefix)) <= 2  # old beats are deleted
        time.sleep(0.6)
        for _ in range(EVIDENCE):  # evidence: several listings of its own see the silence
            liveness.refresh()
        assert "w0" not in liveness.dead(["w0"])  # still beating
        assert liveness.dead(["w-never"]) == {"w-never"}  # never beat within the timeout
    finally:
        beats.stop()
        beats.join(timeout=5)
    liveness.refresh()  # sees the last beats, those that were in flight at the stop too
    time.sleep(0.6)
    for _ in range(EVIDENCE):
        liveness.refresh()
    assert liveness.dead(["w0"]) == {"w0"}  # silent now


def test_finished_workers_count_as_dead(tmp_path: Path) -> None:
    from ciflow.distributed.messages import Done, encode

    store = open_store(f"file://{tmp_path}")
    keys = RunKeys("fin")
    store.create(keys.done_of("w3"), encode(Done(worker="w3", exit_code=1, at=0.0)))
    done = finished_workers(store, keys)
    assert done["w3"].exit_code == 1
    assert Liveness(store, keys, timeout=100).dead(["w3"], done) == {"w3"}
