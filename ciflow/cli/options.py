"""What the commands share: common options and loading the pipeline.

``--debug`` needs no state: the one place that turns errors into output (`app`) reads it from
the command line it was given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..model.pipeline import Pipeline

__all__ = ["DebugOption", "FileOption", "HistoryOption"]


FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        "-f",
        metavar="FILE",
        help="The pipeline file [default: ./ciflow.py].",
        dir_okay=False,
        envvar="CIFLOW_FILE",
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]
HistoryOption = Annotated[
    Path | None,
    typer.Option(
        "--history",
        metavar="PATH",
        help="Duration history file [default: .ciflow/history.json beside the pipeline file].",
        envvar="CIFLOW_HISTORY",
    ),
]


def _sources(pipeline: Pipeline) -> dict[str, tuple[str, int]]:
    """Each module's file (relative to the working directory where possible) and line."""
    found = {}
    for name, mod in pipeline.modules.items():
        code = getattr(mod.fn, "__code__", None)
        if code is not None:
            path = Path(code.co_filename)
            try:
                path = path.relative_to(Path.cwd())
            except ValueError:
                pass
            found[name] = (str(path), code.co_firstlineno)
    return found


def _history_path(pipeline: Pipeline, given: Path | None) -> Path:
    from ..planning.history import DEFAULT_PATH

    if given is not None:
        return given
    base = pipeline.folder
    return base / DEFAULT_PATH


def _load(file: Path | None, debug: bool) -> Pipeline:
    """Load the pipeline file (``debug`` is read by the error handler from the command line)."""
    from ..model.pipeline import load_pipeline

    return load_pipeline(file)
