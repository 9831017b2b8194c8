"""One attempt of one module: skip condition, the call, the result's validation.

`run_attempt` is the single place where a module's function is called, by the local engine and by
distributed workers alike. It never raises for what the module does: whatever the function
raises (any `BaseException`, ``KeyboardInterrupt`` and ``SystemExit`` included) becomes an
`AttemptResult`; only ciflow's own cancellation ends an attempt as ``CANCELLED``. Timeouts and
retries are decided around it (`ciflow.execution.policy`). See docs/architecture.md, "Execution".
"""

from __future__ import annotations

import asyncio
import enum
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CommandFailed, ModuleCancelled, ResultTypeError
from ..model.module import Module
from ..model.pipeline import Binding
from .capture import routed
from .context import Context
from .process import Cancellation

__all__ = ["AttemptResult", "Ending", "run_attempt"]


class Ending(enum.Enum):
    """How an attempt ended, before any policy (retries, ignore_failure) is applied."""

    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    CACHED = "cached"  # the result cache had it: nothing ran


@dataclass(slots=True)
class AttemptResult:
    """What one attempt gave: the value and its JSON, or why it did not succeed."""

    ending: Ending
    value: Any = None
    data: bytes | None = None
    detail: str | None = None
    #: the failure is a bug in the pipeline file (a result that breaks its annotation): exit 2
    definition_error: bool = False


def run_attempt(
    mod: Module,
    binding: Binding,
    *,
    number: int,
    context: Callable[[], Context],
    inputs: Mapping[str, Any],
    cancellation: Cancellation,
    output: Callable[[str, str], None],
    on_start: Callable[[], None] = lambda: None,
    loop: asyncio.AbstractEventLoop | None = None,
    lookup: Callable[[], AttemptResult | None] | None = None,
) -> AttemptResult:
    """Run attempt ``number`` of ``mod`` with its dependencies' values ``inputs`` (by name).

    ``context`` makes the module's `Context` (called only if the module takes one or has a
    skip condition); ``on_start`` is called just before the function (the caller's clock
    starts there); ``output`` receives what the function prints (`ciflow.execution.capture`)
    and the traceback lines of a failure. The skip condition is
    evaluated on the first attempt only. ``lookup`` (the result cache's hook) runs after the
    skip condition and ``on_start``: a result it gives ends the attempt without the call.
    """
    name = mod.name
    ctx = context() if binding.ctx_param is not None or mod.skip_if is not None else None
    if number == 1 and mod.skip_if is not None:
        assert ctx is not None
        skipped = _skip(mod, ctx)
        if skipped is not None:
            return skipped
    kwargs: dict[str, Any] = {}
    if binding.ctx_param is not None:
        kwargs[binding.ctx_param] = ctx
    for param, dep in binding.dep_params:
        kwargs[param] = inputs.get(dep)
    on_start()
    if lookup is not None:
        cached = lookup()
        if cached is not None:
            return cached
    try:
        with routed(name, output):  # print() and sys.stderr of the module: its output lines
            if mod.is_async:
                value = _run_async(loop, mod.fn(**kwargs), cancellation)
            else:
                value = mod.fn(**kwargs)
        cancellation.check()
        data = binding.result.encode(value, name)
        if not binding.result.is_none:
            value = binding.result.decode(data, name)
        return AttemptResult(Ending.SUCCESS, value, data)
    except ModuleCancelled as exc:
        return AttemptResult(Ending.CANCELLED, detail=exc.reason)
    except ResultTypeError as exc:
        return AttemptResult(Ending.FAILURE, detail=str(exc), definition_error=True)
    except CommandFailed as exc:
        if cancellation.cancelled:
            return AttemptResult(Ending.CANCELLED, detail=cancellation.reason)
        return AttemptResult(Ending.FAILURE, detail=str(exc))
    except BaseException as exc:  # noqa: BLE001 - whatever the module raises fails the module
        if cancellation.cancelled:
            return AttemptResult(Ending.CANCELLED, detail=cancellation.reason)
        for line in traceback.format_exception(exc)[1:]:
            for part in line.rstrip("\n").splitlines():
                output(name, part)
        return AttemptResult(Ending.FAILURE, detail=f"{type(exc).__name__}: {exc}")


def _skip(mod: Module, ctx: Context) -> AttemptResult | None:
    """Evaluate ``skip_if``: an attempt that ends skipped (or failed), or None to run.

    Whatever the condition raises (any `BaseException`) fails the module, like the module's own
    function; a cancellation while it runs ends the attempt cancelled.
    """
    assert mod.skip_if is not None
    try:
        verdict = mod.skip_if(ctx)
    except ModuleCancelled as exc:
        return AttemptResult(Ending.CANCELLED, detail=exc.reason)
    except BaseException as exc:  # noqa: BLE001 - a broken skip condition fails the module
        if ctx.cancellation.cancelled:
            return AttemptResult(Ending.CANCELLED, detail=ctx.cancellation.reason)
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult(Ending.FAILURE, detail=f"skip_if raised {what}")
    if not verdict:
        return None
    description = getattr(mod.skip_if, "description", None)
    reason = verdict if isinstance(verdict, str) else description
    detail = f"skip_if: {reason}" if reason else "skip_if returned true"
    return AttemptResult(Ending.SKIPPED, detail=detail)


def _run_async(
    loop: asyncio.AbstractEventLoop | None, coro: Any, cancellation: Cancellation
) -> Any:
    own = loop is None
    if loop is None:
        loop = asyncio.new_event_loop()
    task = loop.create_task(coro)

    def cancel() -> None:
        assert loop is not None
        loop.call_soon_threadsafe(task.cancel)

    cancellation.on_cancel(cancel)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        raise ModuleCancelled(cancellation.reason or "cancelled") from None
    finally:
        if own:
            loop.close()
