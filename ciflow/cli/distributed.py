"""The distributed commands: plan, worker, status, summary, emulate-github (dry-run: dryrun.py).

Imported only when one of them runs (see ``cli._Group``), so that ``ciflow --help``,
``--version`` and ``ciflow run`` do not pay for them.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .cache import CacheOption, NoCacheOption, RebuildOption, cache_url, checked_rebuild
from .options import DebugOption, FileOption, HistoryOption, _history_path, _load, _sources

if TYPE_CHECKING:
    from ..distributed.keys import RunKeys
    from ..stores import Store

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        metavar="URL",
        help="The run's store, e.g. file:///shared/ciflow.",
        envvar="CIFLOW_STORE",
    ),
]
RunIdOption = Annotated[
    str | None,
    typer.Option(
        "--run-id",
        metavar="ID",
        help="The run's id [default: GitHub run id + attempt].",
        envvar="CIFLOW_RUN_ID",
    ),
]


@app.command("plan")
def plan_(
    file: FileOption = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=1, metavar="N", help="Plan for N identical slots."),
    ] = None,
    pool: Annotated[
        list[str] | None,
        typer.Option(
            "--pool",
            metavar="SPEC",
            help='A runner pool, e.g. "count=3 runs-on=ubuntu-latest os=linux tools=docker" '
            "(repeatable; default: [[tool.ciflow.runners]] in pyproject.toml).",
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", metavar="MODULE", help="Plan this module and what it needs."),
    ] = None,
    skip: Annotated[
        list[str] | None, typer.Option("--skip", metavar="MODULE", help="Leave this module out.")
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", metavar="CATEGORY", help="Plan the modules of this category."),
    ] = None,
    history: HistoryOption = None,
    latency: Annotated[
        float | None,
        typer.Option("--latency", metavar="SECONDS", help="Per-transfer latency override."),
    ] = None,
    bandwidth: Annotated[
        float | None,
        typer.Option("--bandwidth", metavar="MB/S", help="Transfer bandwidth override."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    gantt: Annotated[
        bool, typer.Option("--gantt", help="Print the timeline as a mermaid Gantt chart.")
    ] = False,
    schema: Annotated[
        bool, typer.Option("--schema", help="Print the plan's JSON Schema and exit.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="PATH", help="Store the plan (JSON) here.")
    ] = None,
    store: StoreOption = None,
    run_id: RunIdOption = None,
    wait_for_workers: Annotated[
        int | None,
        typer.Option(
            "--wait-for-workers",
            min=1,
            metavar="N",
            help="Wait for N workers to register in --store, plan over what they offer.",
        ),
    ] = None,
    min_workers: Annotated[
        int | None,
        typer.Option(
            "--min-workers",
            min=1,
            metavar="M",
            help="With --wait-for-workers: after --register-timeout, plan with M or more.",
        ),
    ] = None,
    register_timeout: Annotated[
        float,
        typer.Option("--register-timeout", metavar="SECONDS", help="How long to wait."),
    ] = 300.0,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
    rebuild: RebuildOption = None,
    debug: DebugOption = False,
) -> None:
    """Compute which CI slot runs which module; print it, store it, emit the GitHub matrix."""
    import json
    import os

    from ..planning.planner import DistributedExecutionPlan

    if schema:
        typer.echo(json.dumps(DistributedExecutionPlan.model_json_schema(), indent=2))
        return
    pipeline = _load(file, debug)
    from .._files import atomic_write_text
    from ..planning.planner import RunnerPool, Transfer, load_pools, parse_pool, plan_pipeline
    from ..stores import open_store

    target = None
    if store is not None or wait_for_workers is not None:
        target = _open_run(store, run_id)
    if wait_for_workers is not None:
        assert target is not None
        from ..distributed.orchestrator import wait_for_registrations

        regs = wait_for_registrations(
            target[0], target[1], wait_for_workers, min_workers, register_timeout
        )
        pools = [
            RunnerPool(
                count=1,
                runs_on=r.runs_on or "self",
                os=r.os,
                arch=r.arch,
                tools=tuple(r.tools),
                tags=tuple(r.tags),
            )
            for r in regs
        ]
    elif pool:
        pools = [parse_pool(spec) for spec in pool]
    elif workers is not None:
        pools = [RunnerPool(count=workers)]
    else:
        base = pipeline.folder
        pools, _ = load_pools(base)
    selection = pipeline.select(only or (), skip or (), category or ())
    from ..stores.registry import backend_for

    kind = backend_for(store).scheme if store is not None else "file"  # prices transfers
    transfer = Transfer.for_store(kind, latency, None if bandwidth is None else bandwidth * 1e6)
    from ..cache.predict import expected_hits, merged_history

    cache_store = None if no_cache else open_store(cache_url(pipeline, cache))
    cached: set[str] = set()
    if cache_store is not None:
        cached = expected_hits(cache_store, pipeline, selection.names)
    result = plan_pipeline(
        pipeline,
        pools,
        selection=selection,
        history=merged_history(_history_path(pipeline, history), cache_store),
        transfer=transfer,
        cached=cached - set(checked_rebuild(pipeline, rebuild)),
    )
    if wait_for_workers is not None:
        for planned, reg in zip(result.slots, regs, strict=True):
            planned.slot = reg.slot
    from ..providers.registry import current, detect_job

    job = detect_job()
    result.attempt = job.attempt or 1  # a worker of a later attempt resumes this plan's run
    if target is not None:
        from ..distributed.orchestrator import publish_plan

        publish_plan(target[0], target[1], result, lambda line: typer.echo(line, err=True))
    if as_json:
        typer.echo(result.to_json(), nl=False)
    elif gantt:
        typer.echo(result.gantt())
    else:
        typer.echo(result.render())
    from ..planning.creations import creations_line  # github://: each slot's estimate

    if (creations := creations_line(pipeline, result)) is not None:
        typer.echo(f"  {creations}", err=as_json or gantt)
    if out is not None:
        try:
            atomic_write_text(out, result.to_json())
        except OSError as exc:
            raise UsageError(f"cannot write the plan to {out}: {exc.strerror or exc}") from None
    matrix = json.dumps(result.matrix(), separators=(",", ":"))
    outputs = {"matrix": matrix, "workers": str(len(result.slots))}
    if target is not None:
        outputs["run-id"] = target[1].run_id  # workers and summary of every attempt take it
    current().publish_outputs(os.environ, outputs)


def _open_run(
    store: str | None, run_id: str | None, poll: float | None = None, resume: bool = False
) -> "tuple[Store, RunKeys]":
    """The run's store and keys; with ``resume`` (worker, summary) and no explicit run id, a
    later CI attempt finds the run its plan job made (`resume.planned_run`)."""
    from ..distributed.keys import RunKeys
    from ..stores import open_store

    if store is None:
        import os

        from ..providers.registry import current

        store = current().default_store(os.environ)
        if store is None:
            raise UsageError(
                "no store: pass --store URL (e.g. file:///tmp/ciflow) or set CIFLOW_STORE"
            )
    run = run_id or _default_run_id()
    if run is None:
        raise UsageError("no run id: pass --run-id ID or set CIFLOW_RUN_ID")
    opened = open_store(store, poll=poll)
    if run_id is None and resume:
        from ..distributed.resume import planned_run

        run = planned_run(opened, run, _attempt())
    return opened, RunKeys(run)


def _default_run_id() -> str | None:
    from ..providers.registry import detect_job

    return detect_job().run_id


def _attempt() -> int | None:
    """The CI run attempt of this job (``CIFLOW_RUN_ATTEMPT``, ``GITHUB_RUN_ATTEMPT``)."""
    from ..providers.registry import detect_job

    return detect_job().attempt


@app.command()
def worker(
    slot: Annotated[
        int | None,
        typer.Option(
            "--slot",
            min=0,
            metavar="K",
            help="This worker's slot in the plan [default: from CIFLOW_SLOT, or the CI "
            "system's parallel index: GitLab, Kubernetes Indexed Jobs, CircleCI, Buildkite].",
        ),
    ] = None,
    file: FileOption = None,
    store: StoreOption = None,
    run_id: RunIdOption = None,
    plan: Annotated[
        Path | None,
        typer.Option("--plan", metavar="PATH", help="Plan file (published to the store)."),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Modules run at once.")
    ] = 2,
    steal: Annotated[
        bool,
        typer.Option(
            "--steal/--no-steal", help="Ask busy slots for ready modules they have not started."
        ),
    ] = True,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", "-k", help="Do not cancel the run on a failure.")
    ] = False,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", metavar="TAG", help="A tag this worker offers (repeatable)."),
    ] = None,
    runs_on: Annotated[
        str | None, typer.Option("--runs-on", metavar="LABEL", help="This runner's CI label.")
    ] = None,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-interval",
            metavar="SECONDS",
            help="[default: the store's: 1 s on file://, coarser on remote stores]",
        ),
    ] = None,
    heartbeat_timeout: Annotated[
        float | None,
        typer.Option(
            "--heartbeat-timeout",
            metavar="SECONDS",
            help="Silence after which a worker counts as dead and its modules are taken over "
            "[default: 4 heartbeats, at least 10 s].",
        ),
    ] = None,
    plan_timeout: Annotated[
        float,
        typer.Option("--plan-timeout", metavar="SECONDS", help="How long to wait for a plan."),
    ] = 600.0,
    serve_timeout: Annotated[
        float,
        typer.Option(
            "--serve-timeout",
            min=0.0,
            metavar="SECONDS",
            help="How long a ready module that no live worker can serve (its requirements "
            "match none of them) waits before it fails.",
        ),
    ] = 60.0,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll",
            min=0.001,
            metavar="SECONDS",
            help="How often to look at the store when a result is due [default: the store's: "
            "10 ms on file://, 0.5 s on github://, where looks follow the plan's forecast, at "
            "most 15 s apart]. Every look at github:// is an API call.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide command output.")] = False,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
    rebuild: RebuildOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the modules of one slot of a distributed run (and steal or take over others)."""
    pipeline = _load(file, debug)
    from ..distributed.worker import Worker, WorkerOptions
    from ..ui.console import Console

    if slot is None:
        from ..providers.registry import detect_job, slot_sources

        job = detect_job()
        if job.slot is None:
            raise UsageError(
                "no slot: pass --slot K (or run where the CI system numbers parallel jobs: "
                f"{slot_sources()})"
            )
        slot = job.slot
    target_store, keys = _open_run(store, run_id, poll, resume=plan is None)
    if plan is not None:
        from ..distributed.orchestrator import load_plan_file, publish_plan

        publish_plan(target_store, keys, load_plan_file(plan))
    workdir = pipeline.folder
    options = WorkerOptions(
        slot=slot,
        jobs=jobs,
        slow_poll=None if poll is None else 2.5 * poll,
        steal=steal,
        keep_going=keep_going,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        plan_timeout=plan_timeout,
        serve_timeout=serve_timeout,
        tags=tuple(tag or ()),
        runs_on=runs_on,
        workdir=workdir,
        cache=None if no_cache else cache_url(pipeline, cache),
        rebuild=tuple(checked_rebuild(pipeline, rebuild)),
        attempt=_attempt(),
    )
    console = Console(verbose=not quiet)
    console.sources = _sources(pipeline)
    code = Worker(pipeline, target_store, keys.run_id, options, console).run()
    raise typer.Exit(code)


@app.command()
def summary(
    store: StoreOption = None,
    run_id: RunIdOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", metavar="PATH", help="Write the JSON run report.")
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            metavar="URL",
            envvar="CIFLOW_CACHE",
            help="Record the run's durations in this cache store [default: the Actions cache "
            "inside GitHub Actions, else none].",
        ),
    ] = None,
    no_cache: NoCacheOption = False,
) -> None:
    """Render a distributed run's summary (and JSON report) from the store."""
    import os

    from ..providers.registry import current
    from ..stores import open_store
    from ..ui.console import Console
    from .verdict import render_run

    target, keys = _open_run(store, run_id, resume=True)
    url = None if no_cache else cache or current().default_cache(os.environ)
    cache_store = None if url is None else open_store(url)
    code = render_run(target, keys, Console(), report, None, cache_store, _attempt(), carry=True)
    raise typer.Exit(code)


@app.command()
def status(store: StoreOption = None, run_id: RunIdOption = None) -> None:
    """Show a run's workers with liveness, modules by outcome, and who ran what."""
    from ..distributed.orchestrator import render_status

    target, keys = _open_run(store, run_id)
    typer.echo(render_status(target, keys))


@app.command(
    "emulate-github",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def emulate_github(ctx: typer.Context) -> None:
    """Serve a local emulator of GitHub's artifact and cache services (see --help)."""
    from ..testing.emulator import main as emulator_main

    raise typer.Exit(emulator_main(list(ctx.args)))
