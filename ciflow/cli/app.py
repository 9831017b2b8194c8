"""The ``ciflow`` command line. The only place that turns errors into output and exit codes.

Exit codes: one table, `ciflow.errors.ExitCode` (README.md, "Exit codes"), for every command.
Heavy imports happen inside the commands so that ``ciflow --help`` and ``--version`` stay fast.
"""

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from ..errors import CiflowError, ExitCode
from .cache import CacheOption, NoCacheOption, RebuildOption
from .cache import app as cache_app
from .options import (
    DebugOption,
    FileOption,
    HistoryOption,
    _history_path,
    _load,
    _sources,
)

if TYPE_CHECKING:
    pass

__all__ = ["app", "main"]


# Commands defined in distributed.py (dry-run: dryrun.py, serve: serve.py), imported only when
# one of them runs (or for --help).
_LAZY = ("plan", "worker", "dry-run", "status", "summary", "emulate-github", "serve")


class _Group(TyperGroup):
    """Runs a command and turns a `CiflowError` into one line on stderr and its exit code."""

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *_LAZY]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in _LAZY:
            from typer.main import get_command

            from . import distributed, dryrun, serve

            group = {"dry-run": dryrun.app, "serve": serve.app}.get(cmd_name, distributed.app)
            return get_command(group).get_command(ctx, cmd_name)  # type: ignore[attr-defined]
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: Any) -> Any:
        rest = [
            *getattr(ctx, "_protected_args", ()),
            *getattr(ctx, "protected_args", ()),
            *ctx.args,
        ]
        try:
            return super().invoke(ctx)
        except CiflowError as exc:
            _fail(exc, debug=bool(ctx.params.get("debug")) or "--debug" in rest)
        except KeyboardInterrupt:
            typer.echo("ciflow: interrupted", err=True)
            raise typer.Exit(ExitCode.INTERRUPTED) from None


def _fail(exc: CiflowError, debug: bool) -> None:
    from ..execution.masking import MASKER

    if debug:
        import traceback

        typer.echo(MASKER.mask("".join(traceback.format_exception(exc))), err=True)
    message = MASKER.mask(str(exc)).replace("\n", " | ")
    typer.echo(f"ciflow: error: {message}", err=True)
    raise typer.Exit(exc.exit_code)


#: the exit codes in one line of --help (the table is `ExitCode`)
EXIT_CODES = (
    "Exit codes: 0 all good, 1 a module failed, 2 usage or pipeline error, 3 results missing, "
    "4 no such run in the store, 130 interrupted."
)

app = typer.Typer(
    cls=_Group,
    name="ciflow",
    help="Run a pipeline of CI modules on one machine or spread over many CI runners.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    epilog=EXIT_CODES,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ciflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors.", envvar="CIFLOW_DEBUG")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            metavar="PEM",
            help="Trust this CA for TLS stores (https://, rediss://, s3:// endpoints): sets "
            "CIFLOW_STORE_CA_FILE (and AWS_CA_BUNDLE unless set).",
        ),
    ] = None,
    retention_days: Annotated[
        str | None,
        typer.Option(
            "--retention-days",
            metavar="N",
            envvar="CIFLOW_RETENTION_DAYS",
            help="Days GitHub keeps the records of github:// (1-90) [default: 1]: sets "
            "CIFLOW_RETENTION_DAYS.",
        ),
    ] = None,
) -> None:
    """Run a pipeline of CI modules on one machine or spread over many CI runners.

    Exit codes: 0 all good, 1 a module failed, 2 usage or pipeline error, 3 results missing,
    4 no such run in the store, 130 interrupted.
    """
    del debug  # read again by _Group.invoke when an error needs it
    if ca_file is not None:
        import os

        if not ca_file.is_file():
            raise typer.BadParameter(f"{ca_file} is not a file", param_hint="--ca-file")
        os.environ["CIFLOW_STORE_CA_FILE"] = str(ca_file.resolve())
        os.environ.setdefault("AWS_CA_BUNDLE", str(ca_file.resolve()))
    if retention_days is not None:
        import os

        from ..stores.github.naming import retention_days as check_days

        os.environ["CIFLOW_RETENTION_DAYS"] = str(
            check_days(retention_days, "--retention-days (CIFLOW_RETENTION_DAYS)")
        )


@app.command()
def run(
    file: FileOption = None,
    jobs: Annotated[
        int | None,
        typer.Option(
            "--jobs", "-j", min=1, metavar="N", help="Modules run at once [default: CPUs x 2]."
        ),
    ] = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going", "-k", help="After a failure, run everything that does not need it."
        ),
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", metavar="MODULE", help="Run this module and what it needs (repeatable)."
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option("--skip", metavar="MODULE", help="Leave this module out (repeatable)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category", metavar="CATEGORY", help="Run the modules of this category (repeatable)."
        ),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(
            "--tag", metavar="TAG", help="A tag this machine offers to `requires` (repeatable)."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", metavar="PATH", help="Write the JSON run report here."),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", metavar="ID", help="Name this run [default: generated]."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Hide the output of modules' commands.")
    ] = False,
    history: HistoryOption = None,
    no_history: Annotated[
        bool, typer.Option("--no-history", help="Do not record durations for the planner.")
    ] = False,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
    rebuild: RebuildOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the pipeline on this machine, in parallel, and print a summary."""
    pipeline = _load(file, debug)
    from ..execution.engine import Engine
    from ..model.requirements import Capabilities, check_requirements
    from ..ui.console import Console
    from ..ui.summary import render_summary

    selection = pipeline.select(only or (), skip or (), category or ())
    active = [n for n in selection.names if n not in selection.skipped]
    tools = {t for n in active for t in pipeline.modules[n].requires.tools}
    check_requirements(pipeline.modules, active, Capabilities.detect(tools, tag or ()))
    console = Console(verbose=not quiet)
    console.sources = _sources(pipeline)
    from .cache import finish_cache, open_cache

    module_cache = open_cache(pipeline, cache, off=no_cache, rebuild=rebuild, warn=console.message)
    engine = Engine(
        pipeline, selection, console=console, jobs=jobs, keep_going=keep_going,
        workdir=pipeline.folder, run_id=run_id, cache=module_cache,
    )  # fmt: skip
    result = engine.run()
    if not no_history:
        from ..planning.history import History

        try:
            History.update(_history_path(pipeline, history), result.records)
        except CiflowError as exc:
            console.print(f"ciflow: warning: {exc}")
    finish_cache(module_cache, result, explicit=cache is not None, warn=console.message)
    from .verdict import write_outputs

    failure = write_outputs(result, report, None)
    console.print(render_summary(result, None if failure is None else "report not written"))
    if failure is not None:
        raise failure
    if report is not None:
        console.print(f"report written to {report}")
    raise typer.Exit(result.exit_code)


@app.command("list")
def list_(
    file: FileOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    debug: DebugOption = False,
) -> None:
    """List the modules: dependencies, category, tags and settings."""
    import json

    pipeline = _load(file, debug)
    entries = []
    for name in pipeline.order:
        mod = pipeline.modules[name]
        deps = [d.name + ("?" if d.optional else "") for d in mod.depends_on]
        flags = []
        if mod.timeout:
            flags.append(f"timeout={mod.timeout:g}s")
        if mod.retries:
            flags.append(f"retries={mod.retries}")
        if mod.alone:
            flags.append("alone")
        flags += [f"not_in_parallel={k}" for k in mod.not_in_parallel]
        if mod.parallel_limit:
            flags.append(f"limit={mod.parallel_limit.name}:{mod.parallel_limit.count}")
        for flag in ("always_run", "ignore_failure", "cache"):
            if getattr(mod, flag):
                flags.append(flag)
        if mod.skip_if is not None:
            flags.append("skip_if=" + getattr(mod.skip_if, "description", "<callable>"))
        if mod.requires:
            flags.append("requires")
        entries.append(
            {
                "name": name,
                "depends_on": deps,
                "category": mod.category,
                "tags": list(mod.tags),
                "settings": flags,
            }
        )
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    rows = [["module", "depends on", "category", "tags", "settings"]]
    for e in entries:
        rows.append(
            [
                str(e["name"]),
                ", ".join(e["depends_on"]) or "-",  # type: ignore[arg-type]
                str(e["category"] or "-"),
                ", ".join(e["tags"]) or "-",  # type: ignore[arg-type]
                ", ".join(e["settings"]) or "-",  # type: ignore[arg-type]
            ]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())


class GraphFormat(enum.StrEnum):
    MERMAID = "mermaid"
    DOT = "dot"


@app.command()
def graph(
    file: FileOption = None,
    fmt: Annotated[GraphFormat, typer.Option("--format", help="Output format.")] = (
        GraphFormat.MERMAID
    ),
    debug: DebugOption = False,
) -> None:
    """Print the dependency graph as mermaid (default) or Graphviz dot."""
    from ..ui.diagram import to_dot, to_mermaid

    pipeline = _load(file, debug)
    typer.echo(to_dot(pipeline) if fmt is GraphFormat.DOT else to_mermaid(pipeline))


@app.command()
def validate(file: FileOption = None, debug: DebugOption = False) -> None:
    """Check the pipeline file without running anything."""
    from ..model.requirements import Capabilities, unmet

    pipeline = _load(file, debug)
    edges = sum(len(m.depends_on) for m in pipeline.modules.values())
    typer.echo(f"ok: {pipeline.path}: {len(pipeline)} module(s), {edges} dependencies")
    tools = {t for m in pipeline.modules.values() for t in m.requires.tools}
    caps = Capabilities.detect(tools)
    for problem in unmet(pipeline.modules, pipeline.order, caps):
        typer.echo(f"note: this machine cannot run {problem}")


app.add_typer(cache_app)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ciflow")
