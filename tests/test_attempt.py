"""`run_attempt`: whatever a module or its skip condition raises ends the attempt, not the run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import ciflow
from ciflow.errors import ModuleCancelled
from ciflow.execution.attempt import AttemptResult, Ending, run_attempt
from ciflow.execution.context import Context
from ciflow.execution.process import Cancellation
from ciflow.model.module import Module
from ciflow.model.pipeline import Pipeline


class Custom(BaseException):
    """A BaseException that `except Exception` does not catch."""


RAISED: list[BaseException] = [
    KeyboardInterrupt(),
    SystemExit(3),
    GeneratorExit("closed"),
    Custom("custom"),
    ValueError("plain"),
]


def _attempt(
    mod: Module, tmp_path: Path, cancellation: Cancellation | None = None
) -> AttemptResult:
    cancellation = cancellation or Cancellation()
    lines: list[str] = []
    return run_attempt(
        mod,
        Pipeline([mod]).bindings[mod.name],
        number=1,
        context=lambda: Context(
            mod.name, workdir=tmp_path, run_id="r", cancellation=cancellation,
            output=lambda _name, line: lines.append(line),
        ),
        inputs={},
        cancellation=cancellation,
        output=lambda _name, line: lines.append(line),
    )  # fmt: skip


def _raiser(exc: BaseException) -> Any:
    def condition(ctx: ciflow.Context) -> bool:
        raise exc

    return condition


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
def test_a_module_raising_any_base_exception_fails(exc: BaseException, tmp_path: Path) -> None:
    def explodes() -> None:
        raise exc

    result = _attempt(ciflow.module(explodes), tmp_path)
    assert result.ending is Ending.FAILURE
    assert result.detail is not None and result.detail.startswith(type(exc).__name__)


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
def test_an_async_module_raising_any_base_exception_fails(
    exc: BaseException, tmp_path: Path
) -> None:
    async def explodes() -> None:
        await asyncio.sleep(0)
        raise exc

    result = _attempt(ciflow.module(explodes), tmp_path)
    assert result.ending is Ending.FAILURE
    assert result.detail is not None and result.detail.startswith(type(exc).__name__)


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
def test_a_skip_if_raising_any_base_exception_fails_the_module(
    exc: BaseException, tmp_path: Path
) -> None:
    ran: list[bool] = []
    mod = ciflow.module(name="guarded", skip_if=_raiser(exc))(lambda: ran.append(True))
    result = _attempt(mod, tmp_path)
    assert result.ending is Ending.FAILURE
    assert result.detail is not None
    assert result.detail.startswith(f"skip_if raised {type(exc).__name__}")
    assert not ran  # the module itself never ran


def test_the_reason_of_an_empty_base_exception_is_its_name(tmp_path: Path) -> None:
    mod = ciflow.module(name="guarded", skip_if=_raiser(KeyboardInterrupt()))(lambda: None)
    assert _attempt(mod, tmp_path).detail == "skip_if raised KeyboardInterrupt"


def test_a_cancelled_skip_if_ends_the_attempt_cancelled(tmp_path: Path) -> None:
    mod = ciflow.module(name="guarded", skip_if=_raiser(ModuleCancelled("fail-fast")))(lambda: None)
    result = _attempt(mod, tmp_path)
    assert (result.ending, result.detail) == (Ending.CANCELLED, "fail-fast")

    cancellation = Cancellation()
    cancellation.cancel("interrupted")
    mod = ciflow.module(name="other", skip_if=_raiser(KeyboardInterrupt()))(lambda: None)
    result = _attempt(mod, tmp_path, cancellation)
    assert (result.ending, result.detail) == (Ending.CANCELLED, "interrupted")
