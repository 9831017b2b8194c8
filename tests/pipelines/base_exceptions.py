"""Modules that raise BaseException subclasses (chosen by CIFLOW_TEST_RAISE), and bystanders.

``CIFLOW_TEST_RAISE`` is one of ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit`` or
``Custom`` (a BaseException subclass); ``CIFLOW_TEST_WHERE`` is ``sync`` (default), ``async``
or ``skip_if`` (the skip condition raises).
"""

import asyncio
import os

import ciflow


class Custom(BaseException):
    """A BaseException no `except Exception` catches."""


def _boom() -> None:
    kind = os.environ.get("CIFLOW_TEST_RAISE", "KeyboardInterrupt")
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    if kind == "GeneratorExit":
        raise GeneratorExit("closed")
    raise Custom("custom base exception")


WHERE = os.environ.get("CIFLOW_TEST_WHERE", "sync")


def _skip(ctx: ciflow.Context) -> bool:
    _boom()
    return False


if WHERE == "async":

    @ciflow.module
    async def explodes() -> int:
        await asyncio.sleep(0.01)
        _boom()
        return 1

elif WHERE == "skip_if":

    @ciflow.module(skip_if=_skip)
    def explodes() -> int:
        return 1

else:

    @ciflow.module
    def explodes() -> int:
        _boom()
        return 1


@ciflow.module(depends_on=[explodes])
def needs_it(explodes: int) -> int:
    return explodes + 1


@ciflow.module(depends_on=[needs_it])
def needs_that(needs_it: int) -> int:
    return needs_it + 1


@ciflow.module
def independent() -> str:
    return "fine"


@ciflow.module(depends_on=[independent])
def after_independent(independent: str) -> str:
    return independent + "!"
