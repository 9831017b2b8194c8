"""``ciflow dry-run``: the distributed flow on this machine (a plan and N worker processes).

Imported only when it runs (see ``cli._Group``).
"""

from pathlib import Path
from typing import Annotated

import typer

from .cache import CacheOption, NoCacheOption, RebuildOption, cache_url, checked_rebuild
from .distributed import StoreOption
from .options import DebugOption, FileOption, _history_path, _load

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.callback()
def _group() -> None:
    """Makes this app a group, as `cli._Group` looks commands up in one."""


@app.command("dry-run")
def dry_run(
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, metavar="N", help="Worker processes.")
    ] = 2,
    file: FileOption = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, metavar="N", help="Modules per worker at once.")
    ] = 2,
    kill: Annotated[
        list[str] | None,
        typer.Option("--kill", metavar="SLOT@SECONDS", help="SIGKILL a worker mid-run."),
    ] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", "-k")] = False,
    store: StoreOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", metavar="PATH", help="Write the JSON run report.")
    ] = None,
    heartbeat_timeout: Annotated[
        float, typer.Option("--heartbeat-timeout", metavar="SECONDS")
    ] = 3.0,
    shared_workdir: Annotated[
        bool,
        typer.Option(
            "--shared-workdir",
            help="Let all workers use the pipeline's folder instead of a copy each.",
        ),
    ] = False,
    cache: CacheOption = None,
    no_cache: NoCacheOption = False,
    rebuild: RebuildOption = None,
    debug: DebugOption = False,
) -> None:
    """Run the distributed flow on this machine: a plan and N real worker processes.

    Each worker gets its own copy of the pipeline's folder (like separate CI runners), so
    declared outputs really travel through the store.
    """
    import tempfile

    pipeline = _load(file, debug)
    assert pipeline.path is not None
    from .._signals import interrupting
    from ..cache.predict import expected_hits, merged_history
    from ..distributed.dryrun import (
        copy_workspaces,
        parse_kill,
        start_workers,
        stop_workers,
        supervise,
    )
    from ..distributed.keys import RunKeys
    from ..distributed.orchestrator import publish_plan, wait_for_registrations
    from ..execution.runner import new_run_id
    from ..model.requirements import Capabilities
    from ..planning.planner import RunnerPool, plan_pipeline
    from ..stores import open_store
    from ..ui.console import Console

    kills = [parse_kill(spec, workers) for spec in kill or ()]
    tools = {t for m in pipeline.modules.values() for t in m.requires.tools}
    caps = Capabilities.detect(tools)
    pool = RunnerPool(count=workers, runs_on="local", os=caps.os, arch=caps.arch,
                      tools=tuple(sorted(caps.tools or ())))  # fmt: skip
    cache_store = None if no_cache else open_store(cache_url(pipeline, cache))
    history = merged_history(_history_path(pipeline, None), cache_store)
    cached = set() if cache_store is None else expected_hits(cache_store, pipeline, pipeline.order)
    plan = plan_pipeline(pipeline, [pool], history=history, cached=cached - set(rebuild or ()))
    console = Console()
    # SIGTERM and SIGHUP stop a dry-run as Ctrl-C does: workers stopped, its folder removed
    with interrupting(), tempfile.TemporaryDirectory(prefix="ciflow-dry-run-") as tmp:
        url = store or f"file://{tmp}/store"
        run_id = new_run_id()
        target = open_store(url)
        keys = RunKeys(run_id)
        console.print(plan.render())
        console.print(f"ciflow: dry-run {run_id}: {workers} worker(s) on {url}")
        extra = ["--jobs", str(jobs), "--heartbeat-interval", str(min(1.0, heartbeat_timeout / 4)),
                 "--heartbeat-timeout", str(heartbeat_timeout)]  # fmt: skip
        if keep_going:
            extra.append("--keep-going")
        extra += ["--no-cache"] if cache_store is None else ["--cache", cache_store.url]
        extra += [a for m in checked_rebuild(pipeline, rebuild) for a in ("--rebuild", m)]
        spaces = None
        if not shared_workdir:
            spaces = copy_workspaces(pipeline.path.parent, Path(tmp) / "workspaces", workers)
        procs = start_workers(workers, pipeline_file=pipeline.path, store_url=url,
                              run_id=run_id, extra=extra, workspaces=spaces)  # fmt: skip
        try:
            try:  # like CI runners, workers come up one by one: start the run once all are there
                wait_for_registrations(target, keys, workers, 1, timeout=30.0)
            finally:
                publish_plan(target, keys, plan)
            codes = supervise(procs, console, kills)
        finally:
            stop_workers(procs, console)  # none left unless interrupted or failed
        from .verdict import render_run

        code = render_run(target, keys, console, report, pipeline.order, cache_store)
        console.print(f"ciflow: worker exit codes: {codes}")
    raise typer.Exit(code)
