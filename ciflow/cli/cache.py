"""The result cache on the command line: ``--cache``/``--no-cache``/``--rebuild`` and
``ciflow cache explain|prune`` (docs/architecture.md, "The result cache")."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import CiflowError, UsageError
from .options import DebugOption, FileOption, _load

if TYPE_CHECKING:
    from ..cache.session import ModuleCache
    from ..model.outcome import RunResult
    from ..model.pipeline import Pipeline

__all__ = [
    "CacheOption", "NoCacheOption", "RebuildOption", "app", "cache_url", "checked_rebuild",
    "finish_cache",
    "open_cache",
]  # fmt: skip

#: the default local cache folder, beside the pipeline file
LOCAL_CACHE = Path(".ciflow") / "cache"

CacheOption = Annotated[
    str | None,
    typer.Option(
        "--cache",
        metavar="URL",
        envvar="CIFLOW_CACHE",
        help="Result cache store [default: .ciflow/cache beside the pipeline; the Actions cache "
        "inside GitHub Actions].",
    ),
]
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Neither look modules up in the cache nor store them.")
]
RebuildOption = Annotated[
    list[str] | None,
    typer.Option("--rebuild", metavar="MODULE", help="Ignore cache hits of MODULE (repeatable)."),
]


def cache_url(pipeline: Pipeline, given: str | None, env: Mapping[str, str] | None = None) -> str:
    """The cache store URL: ``given``, else the CI's default, else the local folder."""
    if given:
        return given
    from ..providers.registry import current

    environ = os.environ if env is None else env
    return current(environ).default_cache(environ) or str(pipeline.folder / LOCAL_CACHE)


def checked_rebuild(pipeline: Pipeline, rebuild: list[str] | None) -> list[str]:
    """The ``--rebuild`` modules; `UsageError` for a name the pipeline does not have."""
    unknown = sorted(set(rebuild or ()) - set(pipeline.modules))
    if unknown:
        raise UsageError(
            f"--rebuild names unknown module(s) {', '.join(unknown)}; `ciflow list` shows them"
        )
    return list(rebuild or ())


def open_cache(
    pipeline: Pipeline,
    url: str | None,
    *,
    off: bool,
    rebuild: list[str] | None,
    warn: Callable[[str], None],
    workdir: Path | None = None,
) -> ModuleCache | None:
    """The run's cache (its store also keeps the run history), or None when it is off."""
    checked_rebuild(pipeline, rebuild)
    if off:
        return None
    from ..cache.session import ModuleCache
    from ..stores.registry import open_store

    store = open_store(cache_url(pipeline, url))
    return ModuleCache(
        store,
        pipeline,
        workdir=workdir if workdir is not None else pipeline.folder,
        rebuild=rebuild or (),
        warn=warn,
    )


def finish_cache(
    cache: ModuleCache | None,
    result: RunResult,
    *,
    explicit: bool,
    warn: Callable[[str], None],
) -> None:
    """After a run: record its durations in the cache store; keep the default folder bounded."""
    if cache is None:
        return
    from ..cache.history import record_run

    try:
        record_run(cache.entries.store, result.records)
    except CiflowError as exc:
        warn(f"cache: the run's durations were not recorded ({exc})")
    if explicit:
        return
    from ..cache.prune import DEFAULT_MAX_AGE, DEFAULT_MAX_BYTES, prune_folder
    from ..stores.file import FileStore

    if isinstance(cache.entries.store, FileStore):
        try:
            prune_folder(cache.url, max_bytes=DEFAULT_MAX_BYTES, max_age=DEFAULT_MAX_AGE)
        except (CiflowError, OSError) as exc:
            warn(f"cache: cannot prune {cache.url} ({exc})")


app = typer.Typer(
    name="cache",
    help="Inspect and clean the result cache.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@app.command()
def explain(
    module: Annotated[str, typer.Argument(metavar="MODULE", help="The module to explain.")],
    file: FileOption = None,
    cache: CacheOption = None,
    debug: DebugOption = False,
) -> None:
    """Print what MODULE's cache key is made of now, and whether the cache has it.

    Dependencies are taken as their newest entries in the cache say (a dependency without
    one is shown as unknown: its result is known only once it ran).
    """
    from ..cache.explain import explain_lines

    pipeline = _load(file, debug)
    if module not in pipeline.modules:
        raise UsageError(f"unknown module {module!r}; `ciflow list` shows the modules")
    from ..stores.registry import open_store

    url = cache_url(pipeline, cache)
    for line in explain_lines(open_store(url), pipeline, module):
        typer.echo(line)


@app.command()
def prune(
    max_size: Annotated[
        str | None,
        typer.Option("--max-size", metavar="SIZE", help="Keep at most SIZE (e.g. 2GB, 500MB)."),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", metavar="AGE", help="Drop entries unused for AGE (7d, 12h)."),
    ] = None,
    file: FileOption = None,
    cache: CacheOption = None,
    debug: DebugOption = False,
) -> None:
    """Delete entries of a folder cache, least recently used first."""
    from ..cache.prune import parse_age, parse_size, prune_folder

    pipeline = _load(file, debug)
    url = cache_url(pipeline, cache)
    size = None if max_size is None else parse_size(max_size)
    age = None if older_than is None else parse_age(older_than)
    if size is None and age is None:
        raise UsageError("give --max-size, --older-than or both")
    report = prune_folder(url, max_bytes=size, max_age=age)
    typer.echo(report)
