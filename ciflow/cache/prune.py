"""Keeping a folder cache small: least recently used entries go first.

A hit touches its entry's data file, so its modification time is the entry's last use. Only
folder caches (``file://`` or a path) can be pruned; GitHub evicts Actions cache entries itself
(7 days unused, 10 GB per repository). `DEFAULT_MAX_BYTES` and `DEFAULT_MAX_AGE` bound the
default local cache after every ``ciflow run`` (docs/architecture.md, "The result cache").
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..stores.base import Store
from .entries import PREFIX

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_BYTES", "parse_age", "parse_size", "prune_folder"]

#: the default local cache keeps at most this many bytes ...
DEFAULT_MAX_BYTES = 2 * 1024**3
#: ... and no entry unused for longer than this (seconds)
DEFAULT_MAX_AGE = 14 * 86400.0

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}  # fmt: skip
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``2GB``, ``500MB``, ``1.5GiB``, ``1000`` (bytes) -> bytes; `UsageError` otherwise."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f"--max-size {text!r} is not a size; write e.g. 2GB, 500MB or 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``2w`` -> seconds; `UsageError` otherwise."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise UsageError(f"--older-than {text!r} is not an age; write e.g. 7d, 12h or 30m")
    return float(match.group(1)) * _AGES[match.group(2)]


@dataclass
class _Entry:
    used: float
    files: list[Path] = field(default_factory=list)
    size: int = 0


def _entries(root: Path) -> list[_Entry]:
    """Every entry of the folder cache at ``root`` with its files, oldest use first."""
    base = root.joinpath(*PREFIX.split("/"))
    found: list[_Entry] = []
    if not base.is_dir():
        return found
    for module in sorted(base.iterdir()):
        files: dict[str, list[Path]] = {}
        for kind in ("keys", "data", "outputs", "parts"):
            folder = module / kind
            for path in sorted(folder.iterdir()) if folder.is_dir() else ():
                key = _key_of(kind, path.name)
                files.setdefault(key, []).append(path)
        for key, paths in files.items():
            data = module / "data" / key
            try:
                used = data.stat().st_mtime
            except OSError:
                used = 0.0  # no data: the rest of a lost or half-written entry, oldest of all
            entry = _Entry(used, sorted(paths, key=lambda p: p.parent.name != "keys"))
            entry.size = sum(p.stat().st_size for p in paths if p.is_file())
            found.append(entry)
    found.sort(key=lambda e: e.used)
    return found


def _key_of(kind: str, name: str) -> str:
    if kind == "keys":
        return name.partition("=")[0]
    if kind == "outputs":
        return name.rpartition("-")[0]
    if kind == "parts":
        return name.partition("-")[2]
    return name


def prune_folder(url: str, *, max_bytes: int | None, max_age: float | None) -> str:
    """Delete entries unused for ``max_age`` s, then the oldest until ``max_bytes`` remain."""
    from ..stores.file import FileStore
    from ..stores.registry import backend_for, normalize_url, open_store

    store = open_store(normalize_url(url)) if backend_for(url).scheme == "file" else None
    if not isinstance(store, FileStore):
        raise UsageError(
            f"cache prune works on folder caches, not {url}; GitHub evicts Actions cache "
            "entries itself (7 days unused, 10 GB per repository)"
        )
    entries = _entries(store.root)
    total = sum(e.size for e in entries)
    now, dropped, freed = time.time(), 0, 0
    for entry in entries:
        old = max_age is not None and now - entry.used > max_age
        big = max_bytes is not None and total - freed > max_bytes
        if not (old or big):
            continue
        for path in entry.files:  # the planner's marker first: never predicts a gone entry
            path.unlink(missing_ok=True)
        dropped, freed = dropped + 1, freed + entry.size
    kept = len(entries) - dropped
    return (
        f"pruned {dropped} entr{'y' if dropped == 1 else 'ies'} ({_human(freed)}); "
        f"{kept} kept ({_human(total - freed)}) in {store.root}"
    )


def touch(store: Store, key: str) -> None:
    """Mark a folder cache's entry used now (what pruning keeps longest); others: nothing."""
    from ..stores.file import FileStore

    if isinstance(store, FileStore):
        try:
            os.utime(store.root.joinpath(*key.split("/")))
        except OSError:
            pass  # a read-only cache is still a cache


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"
