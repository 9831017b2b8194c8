"""Measured durations of past runs, the planner's cost source.

``ciflow run`` appends each run to a small JSON file (default ``.ciflow/history.json`` beside the
pipeline file): per module an exponentially weighted moving average (EWMA) of the durations of
successful attempts, the last duration, the run count and the size of its result. Writes are
atomic and serialized with a file lock, so concurrent runs lose nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_write_text
from ..errors import CiflowError, UsageError
from ..model.outcome import ModuleRecord, Outcome

__all__ = ["ALPHA", "DEFAULT_PATH", "History", "ModuleHistory"]

DEFAULT_PATH = Path(".ciflow") / "history.json"
SCHEMA_VERSION = 1
ALPHA = 0.3  # weight of the newest measurement in the moving average


@dataclass(frozen=True)
class ModuleHistory:
    """What is known of one module's past runs."""

    ewma: float
    last: float
    runs: int
    result_bytes: int = 0


class History:
    """Per-module duration history; `load` it, `record` runs, `save` it back."""

    def __init__(self, modules: dict[str, ModuleHistory] | None = None) -> None:
        self.modules: dict[str, ModuleHistory] = dict(modules or {})

    @classmethod
    def load(cls, path: Path) -> History:
        """Read a history file; a missing file is an empty history."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise UsageError(f"cannot read history {path}: {exc.strerror or exc}") from None
        return cls.parse(text, str(path))

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> History:
        """A history from its JSON (`to_json`); ``where`` names its source in errors."""
        path = where
        try:
            data = json.loads(text)
            version = data["schema_version"]
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise CiflowError(
                    f"history {path} has schema version {version!r}; this ciflow reads up to "
                    f"{SCHEMA_VERSION}: upgrade ciflow or delete the file"
                )
            modules = {
                name: ModuleHistory(
                    ewma=float(entry["ewma"]),
                    last=float(entry["last"]),
                    runs=int(entry["runs"]),
                    result_bytes=int(entry.get("result_bytes", 0)),
                )
                for name, entry in data["modules"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(
                f"history {path} is not a ciflow history file ({exc}); delete it or pass "
                "another --history"
            ) from None
        return cls(modules)

    def record(self, records: Iterable[ModuleRecord]) -> None:
        """Fold one run's successful module durations into the averages."""
        for rec in records:
            if rec.outcome is not Outcome.SUCCEEDED or rec.start is None:
                continue
            size = len(rec.result) if rec.result is not None else 0
            old = self.modules.get(rec.name)
            if old is None:
                self.modules[rec.name] = ModuleHistory(rec.duration, rec.duration, 1, size)
            else:
                ewma = ALPHA * rec.duration + (1 - ALPHA) * old.ewma
                self.modules[rec.name] = ModuleHistory(ewma, rec.duration, old.runs + 1, size)

    def to_json(self) -> str:
        data = {
            "schema_version": SCHEMA_VERSION,
            "modules": {
                name: {
                    "ewma": round(h.ewma, 6),
                    "last": round(h.last, 6),
                    "runs": h.runs,
                    "result_bytes": h.result_bytes,
                }
                for name, h in sorted(self.modules.items())
            },
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def update(path: Path, records: Iterable[ModuleRecord]) -> None:
        """Load, record and save under a lock: safe with concurrent runs."""
        from filelock import FileLock, Timeout

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(path) + ".lock", timeout=30):
                history = History.load(path)
                history.record(records)
                atomic_write_text(path, history.to_json())
        except Timeout:
            raise UsageError(f"history {path} is locked by another run for 30 s") from None
        except OSError as exc:
            raise UsageError(f"cannot write history {path}: {exc.strerror or exc}") from None
