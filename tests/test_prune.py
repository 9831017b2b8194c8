"""Pruning a folder cache: least recently used entries first, whole entries at a time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ciflow.cache.entries import EntryStore
from ciflow.cache.key import KeyParts
from ciflow.cache.prune import parse_age, parse_size, prune_folder
from ciflow.errors import UsageError
from ciflow.stores.file import FileStore


def _entry(store: FileStore, code: str, age_days: float, size: int) -> KeyParts:
    parts = KeyParts(module="m", code=code, spec="s", platform="any")
    EntryStore(store).write(parts, b'"' + b"x" * size + b'"', 1.0, None, "-")
    stamp = time.time() - age_days * 86400
    os.utime(store.root / "cache" / "1" / "m" / "data" / parts.key(), (stamp, stamp))
    return parts


def _keys(store: FileStore) -> set[str]:
    return {k for k in store.list("cache/1/m/data/")}


def test_prune_drops_old_entries_then_the_least_recently_used(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path}")
    old = _entry(store, "old", 30, 10)
    mid = _entry(store, "mid", 2, 10)
    new = _entry(store, "new", 0, 10)
    report = prune_folder(str(tmp_path), max_bytes=None, max_age=7 * 86400)
    assert report.startswith("pruned 1 entry")
    assert _keys(store) == {f"cache/1/m/data/{p.key()}" for p in (mid, new)}
    assert not any(old.key() in k for k in store.list("cache/"))  # marker, parts: all of it
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    prune_folder(str(tmp_path), max_bytes=size - 1, max_age=None)  # one entry too many
    assert _keys(store) == {f"cache/1/m/data/{new.key()}"}
    assert EntryStore(store).marker("m", mid.key()) is None


def test_a_hit_counts_as_a_use(tmp_path: Path) -> None:
    from ciflow.cache.prune import touch

    store = FileStore(f"file://{tmp_path}")
    used = _entry(store, "used", 3, 10)
    _entry(store, "unused", 1, 10)
    touch(store, f"cache/1/m/data/{used.key()}")
    size = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    prune_folder(str(tmp_path), max_bytes=size - 1, max_age=None)
    assert _keys(store) == {f"cache/1/m/data/{used.key()}"}


def test_sizes_and_ages_parse_or_say_what_to_write() -> None:
    assert parse_size("2GB") == 2 * 1000**3 and parse_size("1.5 KiB") == 1536
    assert parse_age("7d") == 7 * 86400 and parse_age("12h") == 43200
    with pytest.raises(UsageError, match="write e.g. 2GB"):
        parse_size("lots")
    with pytest.raises(UsageError, match="write e.g. 7d"):
        parse_age("7 days")


def test_the_command_prunes_folders_and_refuses_other_caches(tmp_path: Path) -> None:
    store = FileStore(f"file://{tmp_path / 'c'}")
    _entry(store, "old", 30, 10)
    pipeline = Path(__file__).parent / "pipelines" / "cached.py"

    def prune(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ciflow", "cache", "prune", "-f", str(pipeline), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    proc = prune("--older-than", "7d", "--cache", str(tmp_path / "c"))
    assert proc.returncode == 0 and proc.stdout.startswith("pruned 1 entry"), proc.stderr
    proc = prune("--max-size", "1GB", "--cache", "github-cache://")
    assert proc.returncode == 2
    assert proc.stderr.startswith("ciflow: error: cache prune works on folder caches")
    proc = prune("--cache", str(tmp_path / "c"))
    assert proc.returncode == 2 and "give --max-size, --older-than or both" in proc.stderr
