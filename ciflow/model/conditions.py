"""Skip conditions for ``@ciflow.module(skip_if=...)``.

A condition is a callable on the module's `Context` that returns true to skip, with a description
that becomes the skip reason. Combine them with ``~``, ``&`` and ``|``::

    skip_if=ciflow.not_on_branch("main") | ~ciflow.env_set("PYPI_TOKEN")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..execution.context import Context

__all__ = ["Condition", "env_set", "not_on_branch", "not_on_ci", "on_branch", "on_ci"]

_FALSY = {"", "0", "false", "no", "off"}


class Condition:
    """A named predicate on the context; true means "skip", and `description` says why."""

    __slots__ = ("_check", "description", "_negated")

    def __init__(
        self, check: Callable[[Context], bool], description: str, negated: str | None = None
    ) -> None:
        self._check = check
        self.description = description
        self._negated = negated if negated is not None else _negate(description)

    def __call__(self, ctx: Context) -> bool:
        return bool(self._check(ctx))

    def __invert__(self) -> Condition:
        return Condition(lambda ctx: not self(ctx), self._negated, self.description)

    def __and__(self, other: Condition) -> Condition:
        text = f"{_group(self.description)} and {_group(other.description)}"
        return Condition(lambda ctx: self(ctx) and other(ctx), text)

    def __or__(self, other: Condition) -> Condition:
        text = f"{_group(self.description)} or {_group(other.description)}"
        return Condition(lambda ctx: self(ctx) or other(ctx), text)

    def __repr__(self) -> str:
        return f"Condition({self.description!r})"


def _group(description: str) -> str:
    """Parenthesize a combined description so that ``&`` and ``|`` keep their grouping."""
    if " and " in description or " or " in description:
        return f"({description})"
    return description


def _negate(description: str) -> str:
    return f"not ({description})"


def on_ci() -> Condition:
    """True when running on a CI system (the ``CI`` variable is set and not false)."""
    return Condition(lambda ctx: ctx.on_ci, "on CI", "not on CI")


def not_on_ci() -> Condition:
    """True when not running on a CI system."""
    return Condition(lambda ctx: not ctx.on_ci, "not on CI", "on CI")


def on_branch(*branches: str) -> Condition:
    """True when the current branch is one of ``branches``."""
    names = " or ".join(branches)
    return Condition(
        lambda ctx: ctx.branch in branches, f"on branch {names}", f"not on branch {names}"
    )


def not_on_branch(*branches: str) -> Condition:
    """True when the current branch is none of ``branches`` (unknown branch counts as not on)."""
    names = " or ".join(branches)
    return Condition(
        lambda ctx: ctx.branch not in branches, f"not on branch {names}", f"on branch {names}"
    )


def env_set(name: str) -> Condition:
    """True when the environment variable ``name`` is set to a non-empty, non-false value."""
    return Condition(
        lambda ctx: is_truthy(ctx.env.get(name)), f"{name} is set", f"{name} is not set"
    )


def is_truthy(value: str | None) -> bool:
    """Interpret an environment value the way CI systems do (``1``, ``true``, ``yes``)."""
    return value is not None and value.strip().lower() not in _FALSY


def running_on_ci(environ: dict[str, str] | None = None) -> bool:
    """Whether ``CI`` says this is a CI machine."""
    return is_truthy((environ if environ is not None else os.environ).get("CI"))
