"""How a command ends a run: the step summary and report written, the summary printed, the code.

Shared by ``run``, ``dry-run`` and ``summary`` so that the headline, the report's exit code and
the process's exit code come from one `RunResult` and always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import CiflowError, RunNotFound

if TYPE_CHECKING:
    from ..distributed.keys import RunKeys
    from ..model.outcome import RunResult
    from ..stores import Store
    from ..ui.console import Console

__all__ = ["render_run", "run_modules", "write_outputs"]


def write_outputs(result: RunResult, report: Path | None, footer: str | None) -> CiflowError | None:
    """Write the step summary and the report before the headline is printed.

    Returns the error if one cannot be written: the headline then says FAILED, as the exit
    code will, instead of an OK the command does not keep.
    """
    from ..ui.report import build_report, write_report
    from ..ui.summary import write_step_summary

    try:
        write_step_summary(result, footer)
        if report is not None:
            write_report(build_report(result), report)
    except CiflowError as exc:
        return exc
    return None


def render_run(
    store: Store,
    keys: RunKeys,
    console: Console,
    report: Path | None,
    order: list[str] | None,
    cache: Store | None = None,
    attempt: int | None = None,
    carry: bool = False,
) -> int:
    """Print the run's summary (and write its report) from the store; return the exit code.

    With ``cache`` (the result cache's store) the run's durations are recorded there, for the
    next plan (`ciflow.cache.history`). ``attempt``: the CI run attempt (a later one reads the
    run as resumed); ``carry``: record what finished for the next attempt
    (`ciflow.distributed.resume`).

    Every module of the stored plan (or ``order`` without one) is shown, those without a result
    as ``missing``. No plan and no result at all is `RunNotFound`, never an empty OK.
    """
    from ..distributed.liveness import finished_workers
    from ..distributed.orchestrator import parse_plan
    from ..distributed.results import ResultCache, read_run
    from ..distributed.resume import attempt_view, record_attempt
    from ..execution.masking import MASKER
    from ..stores.base import StoreError
    from ..ui.summary import render_summary, store_calls

    def warn(line: str) -> None:
        typer.echo(MASKER.mask(f"ciflow: {line}"), err=True)

    view = attempt_view(store, keys, attempt, parse_plan, warn)
    names = list(view.plan.inputs.modules) if view.plan else run_modules(store, keys, order)
    results = ResultCache(store, view.keys)
    result = read_run(store, view.keys, names, results=results, carried=view.carried_records())
    for warning in result.warnings:
        typer.echo(MASKER.mask(f"ciflow: warning: {warning}"), err=True)
    if carry:
        record_attempt(store, view, results.headers, results.payloads, warn)
    try:
        done = finished_workers(store, view.keys)
    except StoreError:  # read_run warned about it
        done = {}
    if cache is not None:
        from ..cache.history import record_run

        try:
            record_run(cache, result.records)
        except StoreError as exc:
            typer.echo(f"ciflow: warning: the run's durations were not recorded ({exc})", err=True)
    calls = store_calls([d.store_ops for d in done.values()], len(result.records))
    failure = write_outputs(result, report, calls)
    console.print(render_summary(result, None if failure is None else "report not written"))
    if calls:
        console.print(calls)
    if failure is not None:
        raise failure
    if report is not None:
        console.print(f"report written to {report}")
    missing = [r.name for r in result.missing]
    if missing:
        console.print(f"ciflow: {len(missing)} module(s) have no result: {', '.join(missing)}")
    return result.exit_code


def run_modules(store: Store, keys: RunKeys, order: list[str] | None) -> list[str]:
    """The run's modules: its stored plan's, else ``order``; `RunNotFound` if there is no run."""
    from ..distributed.orchestrator import plan_order

    names = plan_order(store, keys) or order
    if names:
        return names
    results = store.list(keys.results)
    where = store.url
    if results:
        raise RunNotFound(
            f"run {keys.run_id!r} in {where} has {len(results)} result record(s) but no plan, "
            "so which modules it should have run is unknown; publish the plan with "
            "`ciflow plan --store ... --run-id ...` or check --run-id"
        )
    raise RunNotFound(
        f"no run {keys.run_id!r} in {where}: no plan and no results; check --store and --run-id"
    )
