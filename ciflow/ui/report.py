"""The JSON run report (``--report PATH``): one versioned document per run.

Readers check ``schema_version``; a version newer than this ciflow knows is a clear error.
Version 2: a module without an outcome is ``"outcome": "missing"`` (counted in ``counts``),
``duration`` is the run's span as the workers' own clocks allow (`RunResult.span`), and
``wall_span``/``clock_skew`` tell what the wall clocks said; ``exit_code`` is the command's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .._files import atomic_write_text
from ..errors import CiflowError, UsageError
from ..execution.masking import MASKER
from ..model.outcome import Outcome, RunResult

__all__ = ["SCHEMA_VERSION", "ModuleReport", "RunReport", "build_report", "write_report"]

SCHEMA_VERSION = 2


class ModuleReport(BaseModel):
    """How one module ended."""

    model_config = ConfigDict(extra="forbid")

    name: str
    outcome: Outcome | Literal["missing"]
    attempts: int
    start: datetime | None
    end: datetime | None
    duration: float
    error: str | None = None
    skip_reason: str | None = None
    worker: str | None = None
    slot: int | None = None
    #: the CI run attempt that produced the outcome (a resumed run has several)
    run_attempt: int | None = None
    result: Any = None
    #: ``cache=True`` modules: "hit" or "miss: <what changed>"
    cache: str | None = None
    #: seconds a cache hit saved
    saved: float = 0.0


class RunReport(BaseModel):
    """A whole run: its id, timing, exit code and one entry per module.

    ``duration``: the run's span (seconds), which clock skew between workers cannot inflate;
    ``wall_span``: first start to last end by the records' wall clocks; ``clock_skew``: the
    two disagree (then ``duration`` comes from each worker's own clock).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    run_id: str
    started: datetime
    finished: datetime
    duration: float
    wall_span: float
    clock_skew: bool
    exit_code: int
    interrupted: bool
    counts: dict[str, int]
    modules: list[ModuleReport]


def _time(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)


def build_report(result: RunResult) -> RunReport:
    """The report of a finished run (errors masked)."""
    modules = []
    counts: dict[str, int] = {}
    for rec in result.records:
        counts[rec.state] = counts.get(rec.state, 0) + 1
        modules.append(
            ModuleReport(
                name=rec.name,
                outcome="missing" if rec.outcome is None else rec.outcome,
                attempts=rec.attempts,
                start=_time(rec.start),
                end=_time(rec.end),
                duration=round(rec.duration, 6),
                error=MASKER.mask(rec.error) if rec.error else None,
                skip_reason=MASKER.mask(rec.skip_reason) if rec.skip_reason else None,
                worker=rec.worker,
                slot=rec.slot,
                run_attempt=rec.run_attempt,
                result=MASKER.mask_data(json.loads(rec.result)) if rec.result else None,
                cache=rec.cache,
                saved=round(rec.saved, 6),
            )
        )
    span = result.span
    return RunReport(
        run_id=result.run_id,
        started=datetime.fromtimestamp(result.started, UTC),
        finished=datetime.fromtimestamp(result.finished, UTC),
        duration=round(span.seconds, 6),
        wall_span=round(span.wall, 6),
        clock_skew=span.skewed,
        exit_code=int(result.exit_code),
        interrupted=result.interrupted,
        counts=counts,
        modules=modules,
    )


def write_report(report: RunReport, path: Path) -> None:
    """Write the report atomically: a reader never sees half a file."""
    try:
        atomic_write_text(path, report.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write the report to {path}: {exc.strerror or exc}") from None


def read_report(path: Path) -> RunReport:
    """Read a report written by `write_report`; newer schema versions are refused clearly."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CiflowError(f"cannot read run report {path}: {exc}") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CiflowError(
            f"run report {path} has schema version {version!r}; this ciflow reads up to "
            f"{SCHEMA_VERSION}: upgrade ciflow"
        )
    return RunReport.model_validate(data)
