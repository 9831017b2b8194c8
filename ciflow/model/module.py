"""The ``@ciflow.module`` decorator and the `Module` it returns.

The decorator only records metadata: it checks each argument, wraps the function in a `Module`
and adds it to the registry the pipeline loader collects. Nothing runs at decoration time.
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

from ..errors import DuplicateModuleError, SpecError
from .conditions import Condition
from .constraints import NONE as NO_CONSTRAINTS
from .constraints import Constraints
from .requirements import Requires

__all__ = ["NAME_MAX", "Dependency", "Module", "ParallelLimit", "module", "optional"]

#: the longest module name. Its longest record key, ``runs/<run-id>/results/<name>@unsuccessful``,
#: must fit every store; GitHub's artifact names are the tightest (256 characters for a namespace
#: prefix of up to 40 plus the key, in which an uppercase letter takes two), and 64 leaves room
#: for a run id of 60 lowercase characters (docs/architecture.md, "Module names").
NAME_MAX = 64
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ParallelLimit:
    """A named limit: at most ``count`` modules naming it run at once (across all workers)."""

    name: str
    count: int

    def __post_init__(self) -> None:
        if not self.name:
            raise SpecError("ParallelLimit needs a name")
        if not isinstance(self.count, int) or self.count < 1:
            raise SpecError(f"ParallelLimit {self.name!r}: count must be an integer >= 1")


class Dependency(NamedTuple):
    """One edge: the dependency's name and whether a failure or absence of it is tolerated."""

    name: str
    optional: bool = False


class _Optional:
    __slots__ = ("target",)

    def __init__(self, target: Module | str) -> None:
        self.target = target


def optional(dependency: Module | str) -> Any:
    """Mark a dependency optional: if it is skipped or not selected the parameter gets ``None``.

    Use inside ``depends_on``: ``depends_on=[build, ciflow.optional(docs)]``.
    """
    if not isinstance(dependency, Module | str):
        raise SpecError(f"ciflow.optional() takes a module or a module name, not {dependency!r}")
    return _Optional(dependency)


_NO_REQUIREMENTS = Requires()

SkipIf = Condition | Callable[[Any], Any]
NotInParallel = str | Iterable[str] | bool


class Module:
    """A unit of CI work: the decorated function plus its spec. Calling it calls the function."""

    __slots__ = (
        "fn", "name", "depends_on", "requires", "not_in_parallel", "alone", "parallel_limit",
        "timeout", "retries", "retry_delay", "skip_if", "ignore_failure", "always_run",
        "category", "tags", "inputs", "outputs", "cache", "env", "affinity", "cost", "is_async",
        "constraints",
        "__wrapped__",
    )  # fmt: skip

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        depends_on: Sequence[Module | str | Any] = (),
        requires: Requires | None = None,
        not_in_parallel: NotInParallel = (),
        parallel_limit: ParallelLimit | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_delay: float = 1.0,
        skip_if: SkipIf | None = None,
        ignore_failure: bool = False,
        always_run: bool = False,
        category: str | None = None,
        tags: Iterable[str] = (),
        inputs: Iterable[str] = (),
        outputs: Iterable[str] = (),
        cache: bool = False,
        env: Iterable[str] = (),
        affinity: str | None = None,
        cost: float | None = None,
    ) -> None:
        if not callable(fn):
            raise SpecError(f"@ciflow.module decorates a function, not {fn!r}")
        self.fn = fn
        self.__wrapped__ = fn
        self.name = name if name is not None else getattr(fn, "__name__", "")
        where = _Where(self)
        if not isinstance(self.name, str) or len(self.name) > NAME_MAX:
            raise SpecError(_bad_name(self.name, fn))
        if not _NAME.fullmatch(self.name):
            raise SpecError(
                f"{where}: invalid name; use letters, digits, '_', '-', '.' "
                "starting with a letter or '_'"
            )
        self.depends_on = _dependencies(depends_on, where)
        if requires is not None and not isinstance(requires, Requires):
            raise SpecError(f"{where}: requires= takes ciflow.Requires(...), not {requires!r}")
        self.requires = requires or _NO_REQUIREMENTS
        self.alone, self.not_in_parallel = _keys(not_in_parallel, where)
        if parallel_limit is not None and not isinstance(parallel_limit, ParallelLimit):
            raise SpecError(
                f"{where}: parallel_limit= takes ciflow.ParallelLimit(name, count), "
                f"not {parallel_limit!r}"
            )
        self.parallel_limit = parallel_limit
        self.constraints = (
            Constraints.of(self.alone, self.not_in_parallel, parallel_limit)
            if self.alone or self.not_in_parallel or parallel_limit is not None
            else NO_CONSTRAINTS
        )
        self.timeout = _positive(timeout, "timeout", where)
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise SpecError(f"{where}: retries must be an integer >= 0, not {retries!r}")
        self.retries = retries
        delay = _positive(retry_delay, "retry_delay", where, allow_zero=True)
        self.retry_delay = 0.0 if delay is None else delay
        if skip_if is not None and not callable(skip_if):
            raise SpecError(f"{where}: skip_if must be a callable taking the context")
        self.skip_if = skip_if
        self.ignore_failure = bool(ignore_failure)
        self.always_run = bool(always_run)
        if category is not None and not isinstance(category, str):
            raise SpecError(f"{where}: category must be a string")
        self.category = category
        self.tags = _strings(tags, "tags", where)
        self.inputs = _strings(inputs, "inputs", where)
        self.outputs = _strings(outputs, "outputs", where)
        for pattern in self.outputs:
            if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise SpecError(
                    f"{where}: output {pattern!r} must be a relative path inside the workspace"
                )
        self.cache, self.env = _cache_fields(self, cache, env, where)
        if affinity is not None and (not isinstance(affinity, str) or not affinity):
            raise SpecError(f"{where}: affinity must be a non-empty string")
        self.affinity = affinity
        self.cost = _positive(cost, "cost", where, allow_zero=True)
        self.is_async = inspect.iscoroutinefunction(fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def source(self) -> str:
        """``file.py:line`` of the function, for error messages."""
        return _source(self.fn)

    def __repr__(self) -> str:
        return f"<ciflow module {self.name!r}>"


def _cache_fields(
    mod: Module, cache: bool, env: Iterable[str], where: _Where
) -> tuple[bool, tuple[str, ...]]:
    """Check ``cache=`` and ``env=`` (after ``inputs`` and ``depends_on``)."""
    if cache and not mod.inputs and not mod.depends_on:
        raise SpecError(
            f"{where}: cache=True needs inputs=[...] or depends_on=[...]: the cache key is "
            'made of what the module reads (docs/architecture.md, "The result cache")'
        )
    names = _strings(env, "env", where)
    for var in names:
        if not _ENV_NAME.fullmatch(var):
            raise SpecError(f"{where}: env names environment variables; {var!r} is not one")
    return bool(cache), names


def _source(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        return "<unknown>"
    return f"{os.path.basename(code.co_filename)}:{code.co_firstlineno}"


def _bad_name(name: object, fn: Callable[..., Any]) -> str:
    """The one-line error for a name that is no string or longer than `NAME_MAX`."""
    if not isinstance(name, str):
        return f"{_source(fn)}: module name must be a string, not {name!r}"
    shown = f"{name[:40]!r}…"
    return (
        f"{_source(fn)}: module {shown}: name has {len(name)} characters; at most {NAME_MAX} "
        "(so that every store can name the module's records)"
    )


class _Where:
    """``file.py:line: module 'name'``, formatted only when an error message needs it."""

    __slots__ = ("mod",)

    def __init__(self, mod: Module) -> None:
        self.mod = mod

    def __str__(self) -> str:
        return f"{self.mod.source}: module {self.mod.name!r}"


def _dependencies(deps: Sequence[Any], where: _Where) -> tuple[Dependency, ...]:
    if isinstance(deps, str | Module | _Optional):
        deps = [deps]
    result: list[Dependency] = []
    seen: set[str] = set()
    for dep in deps:
        if type(dep) is Module:  # the common case first
            name = dep.name
            if name in seen:
                raise SpecError(f"{where}: depends on {name!r} twice")
            seen.add(name)
            required = _REQUIRED.get(name)
            if required is None:
                required = _REQUIRED[name] = Dependency(name, False)
            result.append(required)
            continue
        is_optional = isinstance(dep, _Optional)
        target = dep.target if isinstance(dep, _Optional) else dep
        if isinstance(target, Module):
            name = target.name
        elif isinstance(target, str) and target:
            name = target
        else:
            raise SpecError(f"{where}: depends_on takes modules or module names, not {target!r}")
        if name in seen:
            raise SpecError(f"{where}: depends on {name!r} twice")
        seen.add(name)
        result.append(Dependency(name, is_optional))
    return tuple(result)


def _keys(value: NotInParallel, where: _Where) -> tuple[bool, tuple[str, ...]]:
    if value is True:
        return True, ()
    if value is False or value is None:
        return False, ()
    keys = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(k, str) and k for k in keys):
        raise SpecError(
            f"{where}: not_in_parallel takes True (run alone) or one or more non-empty keys"
        )
    return False, tuple(dict.fromkeys(keys))


def _positive(
    value: float | None, what: str, where: _Where, allow_zero: bool = False
) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise SpecError(f"{where}: {what} must be a number of seconds {bound}, not {value!r}")
    return float(value)


def _strings(values: Iterable[str], what: str, where: _Where) -> tuple[str, ...]:
    items = (values,) if isinstance(values, str) else tuple(values)
    if not all(isinstance(v, str) and v for v in items):
        raise SpecError(f"{where}: {what} must be a list of non-empty strings")
    return items


_SPEC_FIELDS = frozenset(inspect.signature(Module.__init__).parameters) - {"self", "fn"}

# Immutable, so shared: one required-dependency edge object per name.
_REQUIRED: dict[str, Dependency] = {}

# The registry the decorator fills and the loader drains (like nox's session registry).
_REGISTRY: dict[str, Module] = {}


def register(mod: Module) -> None:
    """Add a module to the registry; a second module with the same name is an error."""
    existing = _REGISTRY.get(mod.name)
    if existing is not None and existing is not mod:
        raise DuplicateModuleError(
            f"{mod.source}: module {mod.name!r} is already defined at {existing.source}; "
            "give one of them another name (name=...)"
        )
    _REGISTRY[mod.name] = mod


def registered() -> list[Module]:
    """A copy of the registered modules, in definition order."""
    return list(_REGISTRY.values())


def reset_registry() -> None:
    """Forget every registered module (the loader and tests call this)."""
    _REGISTRY.clear()
    _REQUIRED.clear()


@overload
def module(fn: Callable[..., Any], /) -> Module: ...


@overload
def module(
    fn: Literal[None] = None,
    /,
    *,
    name: str | None = None,
    depends_on: Sequence[Module | str | Any] = (),
    requires: Requires | None = None,
    not_in_parallel: NotInParallel = (),
    parallel_limit: ParallelLimit | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_delay: float = 1.0,
    skip_if: SkipIf | None = None,
    ignore_failure: bool = False,
    always_run: bool = False,
    category: str | None = None,
    tags: Iterable[str] = (),
    inputs: Iterable[str] = (),
    outputs: Iterable[str] = (),
    cache: bool = False,
    env: Iterable[str] = (),
    affinity: str | None = None,
    cost: float | None = None,
) -> Callable[[Callable[..., Any]], Module]: ...


def module(
    fn: Callable[..., Any] | None = None, /, **spec: Any
) -> Module | Callable[[Callable[..., Any]], Module]:
    """Declare a module: ``@ciflow.module`` or ``@ciflow.module(depends_on=[build], ...)``.

    The function receives the context (a parameter named ``ctx`` or annotated `Context`) and one
    parameter per dependency whose result it wants, named after that dependency. Its return
    annotation validates and serializes the result.
    """

    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise SpecError(
            f"@ciflow.module got unknown argument(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_SPEC_FIELDS))}"
        )

    def decorate(func: Callable[..., Any]) -> Module:
        if isinstance(func, Module):
            raise SpecError(f"{func.source}: @ciflow.module applied twice to {func.name!r}")
        mod = Module(func, **spec)
        register(mod)
        return mod

    if fn is not None:
        return decorate(fn)
    return decorate
