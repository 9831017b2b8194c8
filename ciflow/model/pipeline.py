"""A validated set of modules (a DAG) and the loader for pipeline files.

`load_pipeline(path)` imports the user's ``ciflow.py`` by absolute path and collects what
``@ciflow.module`` registered; `Pipeline` checks names, dependencies, cycles, parameters and
annotations, and answers selection questions (``--only``, ``--skip``, ``--category``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._gc import gc_paused
from ..errors import (
    CiflowError,
    DuplicateModuleError,
    PipelineError,
    PipelineLoadError,
    SelectionError,
    SignatureError,
    SpecError,
    UnknownModuleError,
)
from . import module as _modules
from .graph import topological_order
from .module import Module
from .result import ResultType, result_type

__all__ = ["Binding", "Pipeline", "Selection", "load_pipeline"]

DEFAULT_FILE = "ciflow.py"


@dataclass(frozen=True)
class Binding:
    """How to call a module: the context parameter and which parameter gets which result."""

    ctx_param: str | None
    dep_params: tuple[tuple[str, str], ...]  # (parameter, dependency name)
    result: ResultType


@dataclass(frozen=True)
class Selection:
    """The modules a run covers, in dependency order, and those `--skip` excluded."""

    names: tuple[str, ...]
    skipped: frozenset[str]


class Pipeline:
    """The validated DAG of modules; construct it from modules or with `load_pipeline`."""

    def __init__(self, modules: Iterable[Module], path: Path | None = None) -> None:
        with gc_paused():
            self._build(modules, path)

    def _build(self, modules: Iterable[Module], path: Path | None) -> None:
        self.path = path
        self.modules: dict[str, Module] = {}
        for mod in modules:
            if mod.name in self.modules and self.modules[mod.name] is not mod:
                raise PipelineError(
                    f"{mod.source}: module {mod.name!r} is defined twice; rename one of them"
                )
            self.modules[mod.name] = mod
        if not self.modules:
            where = f" in {path}" if path else ""
            raise PipelineError(
                f"no modules defined{where}; decorate functions with @ciflow.module"
            )
        _check_distinct(self.modules.values())
        self.order: list[str] = self._dependency_order()
        self.bindings: dict[str, Binding] = {name: _bind(mod) for name, mod in self.modules.items()}
        limits: dict[str, int] = {}
        for mod in self.modules.values():
            lim = mod.parallel_limit
            if lim is not None and limits.setdefault(lim.name, lim.count) != lim.count:
                raise SpecError(
                    f"{mod.source}: parallel limit {lim.name!r} has count {lim.count} here but "
                    f"{limits[lim.name]} elsewhere; use one count per limit name"
                )
        self.limits = limits

    @functools.cached_property
    def dependents(self) -> dict[str, list[str]]:
        """For each module, the modules that depend on it (in dependency order)."""
        found: dict[str, list[str]] = {name: [] for name in self.modules}
        for name in self.order:
            for dep in self.modules[name].depends_on:
                found[dep.name].append(name)
        return found

    def _dependency_order(self) -> list[str]:
        """Dependencies first, ties in definition order; checks names and cycles."""
        position = {name: i for i, name in enumerate(self.modules)}
        in_order = True
        for i, mod in enumerate(self.modules.values()):
            for dep in mod.depends_on:
                at = position.get(dep.name)
                if at is None:
                    raise UnknownModuleError(
                        f"{mod.source}: module {mod.name!r} depends on unknown module "
                        f"{dep.name!r}{_suggest(dep.name, self.modules)}"
                    )
                if at >= i:
                    in_order = False
        if in_order:  # the usual case: modules are defined after what they depend on
            return list(self.modules)
        return topological_order(
            {name: [d.name for d in mod.depends_on] for name, mod in self.modules.items()}
        )

    @property
    def folder(self) -> Path:
        """The pipeline file's folder (the working directory of its modules), else the cwd."""
        return self.path.parent if self.path is not None else Path.cwd()

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, name: str) -> Module:
        try:
            return self.modules[name]
        except KeyError:
            raise UnknownModuleError(
                f"no module named {name!r}{_suggest(name, self.modules)}"
            ) from None

    @property
    def categories(self) -> list[str]:
        """The categories used by the modules, sorted."""
        return sorted({m.category for m in self.modules.values() if m.category})

    def requirements_of(self, names: Iterable[str]) -> list[str]:
        """The named modules plus everything they require (transitively), in dependency order."""
        wanted: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            stack.extend(d.name for d in self.modules[name].depends_on if not d.optional)
        return [name for name in self.order if name in wanted]

    def select(
        self,
        only: Sequence[str] = (),
        skip: Sequence[str] = (),
        categories: Sequence[str] = (),
    ) -> Selection:
        """Resolve selectors: ``only``/``categories`` pick modules plus what they require.

        A selector that matches nothing raises `SelectionError`.
        """
        for name in [*only, *skip]:
            if name not in self.modules:
                raise SelectionError(
                    f"no module named {name!r}{_suggest(name, self.modules)}; "
                    "see `ciflow list` for the modules"
                )
        picked: list[str] = list(only)
        for category in categories:
            members = [n for n, m in self.modules.items() if m.category == category]
            if not members:
                known = ", ".join(self.categories) or "none"
                raise SelectionError(f"no module has category {category!r} (categories: {known})")
            picked += members
        names = self.requirements_of(picked) if picked else list(self.order)
        return Selection(tuple(names), frozenset(skip))


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _param_key(name: str) -> str:
    """The parameter a module's result binds to: its name with ``-`` and ``.`` as ``_``."""
    return name if name.isidentifier() else re.sub(r"[^A-Za-z0-9_]", "_", name)


def _check_distinct(modules: Iterable[Module]) -> None:
    """Refuse two modules that bind to one parameter or whose names differ only in case.

    ``a_b``, ``a-b`` and ``a.b`` all bind to the parameter ``a_b``, so a dependent could not say
    which result it wants; ``Build`` and ``build`` would be one record on a store in a
    case-insensitive folder (the file store on macOS or Windows).
    """
    params: dict[str, Module] = {}
    folded: dict[str, Module] = {}
    for mod in modules:
        key = _param_key(mod.name)
        other = params.setdefault(key, mod)
        if other is not mod:
            raise DuplicateModuleError(
                f"{mod.source}: modules {other.name!r} ({other.source}) and {mod.name!r} both "
                f"bind to the parameter {key!r}; rename one of them"
            )
        other = folded.setdefault(mod.name.casefold(), mod)
        if other is not mod:
            raise DuplicateModuleError(
                f"{mod.source}: modules {other.name!r} ({other.source}) and {mod.name!r} differ "
                "only in case, which stores in case-insensitive folders cannot tell apart; "
                "rename one of them"
            )


_UNSET: Any = object()


def _resolve(annotation: Any, fn: Any) -> Any:
    """Evaluate a string annotation (``from __future__ import annotations``) in fn's globals."""
    if not isinstance(annotation, str):
        return annotation
    if annotation == "None":
        return None
    return eval(annotation, getattr(fn, "__globals__", {}))  # noqa: S307 - the user's own code


def _parameters(fn: Any) -> list[tuple[str, Any, bool]]:
    """(name, raw annotation, has default) per parameter that can be passed by keyword."""
    code = getattr(fn, "__code__", None)
    if code is None or not hasattr(fn, "__defaults__") or inspect.ismethod(fn):
        params = inspect.signature(fn).parameters
        out = []
        for name, p in params.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if p.kind is p.POSITIONAL_ONLY:
                raise SignatureError(f"parameter {name!r} must not be positional-only")
            out.append((name, p.annotation, p.default is not p.empty))
        return out
    if code.co_posonlyargcount:
        name = code.co_varnames[0]
        raise SignatureError(f"parameter {name!r} must not be positional-only")
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    annotations = getattr(fn, "__annotations__", {})
    positional_defaults = len(fn.__defaults__ or ())
    kw_defaults = fn.__kwdefaults__ or {}
    first_default = code.co_argcount - positional_defaults
    return [
        (
            name,
            annotations.get(name, _UNSET),
            i >= first_default if i < code.co_argcount else name in kw_defaults,
        )
        for i, name in enumerate(names)
    ]


def _bind(mod: Module) -> Binding:
    from ..execution.context import Context

    where = f"{mod.source}: module {mod.name!r}"
    try:
        params = _parameters(mod.fn)
    except SignatureError as exc:
        raise SignatureError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise SignatureError(f"{where}: cannot read its signature: {exc}") from None
    deps = {_param_key(d.name): d.name for d in mod.depends_on} if params else {}
    ctx_param: str | None = None
    bound: list[tuple[str, str]] = []
    try:
        for pname, annotation, has_default in params:
            is_ctx = annotation is Context or (
                isinstance(annotation, str)
                and "Context" in annotation
                and _resolve(annotation, mod.fn) is Context
            )
            if is_ctx or (pname in ("ctx", "context") and pname not in deps):
                if ctx_param is not None:
                    raise SignatureError(f"{where}: two context parameters ({ctx_param}, {pname})")
                ctx_param = pname
            elif pname in deps:
                bound.append((pname, deps[pname]))
            elif not has_default:
                known = ", ".join(sorted(deps)) or "none"
                raise SignatureError(
                    f"{where}: parameter {pname!r} names no dependency (its dependencies: "
                    f"{known}); name it after a module in depends_on, or call it ctx for the "
                    "context"
                )
        raw = getattr(mod.fn, "__annotations__", {}).get("return", Any)
        annotation = _resolve(raw, mod.fn)
    except SignatureError:
        raise
    except Exception as exc:  # NameError for an undefined forward reference, mostly
        raise SignatureError(f"{where}: cannot resolve its annotations: {exc}") from None
    try:
        rtype = result_type(annotation)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return Binding(ctx_param, tuple(bound), rtype)


def load_pipeline(path: str | Path | None = None) -> Pipeline:
    """Import the pipeline file (default ``./ciflow.py``) and return its validated `Pipeline`.

    Whatever the import raises becomes one-line `PipelineLoadError` (``sys.exit()`` included),
    except ``KeyboardInterrupt``, which stays an interrupt.
    """
    file = Path(path if path is not None else DEFAULT_FILE).expanduser().resolve()
    if not file.is_file():
        hint = "pass -f PATH" if path is None else "check the path given with -f"
        raise PipelineLoadError(f"pipeline file not found: {file}; create {DEFAULT_FILE} or {hint}")
    digest = hashlib.sha1(str(file).encode()).hexdigest()[:12]
    module_name = f"ciflow_pipeline_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"cannot import {file}: not a Python file")
    py_module = importlib.util.module_from_spec(spec)
    _modules.reset_registry()
    sys.modules[module_name] = py_module
    folder = str(file.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        with gc_paused():
            spec.loader.exec_module(py_module)
    except SyntaxError as exc:
        raise PipelineLoadError(
            f"{exc.filename or file}:{exc.lineno}: syntax error: {exc.msg}"
        ) from exc
    except CiflowError:
        raise
    except KeyboardInterrupt:  # Ctrl-C while importing: the command is interrupted (exit 130)
        raise
    except SystemExit as exc:  # sys.exit() in the pipeline file must not end ciflow silently
        line = _user_line(exc, file)
        code = "" if exc.code is None else repr(exc.code)
        raise PipelineLoadError(
            f"{file.name}{line}: the pipeline file called sys.exit({code}) at import; a pipeline "
            "file only defines modules (put the check inside a module or a skip_if)"
        ) from exc
    except BaseException as exc:  # noqa: BLE001 - any other failure of the import is the file's
        line = _user_line(exc, file)
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise PipelineLoadError(
            f"{file.name}{line}: error while importing the pipeline: {what}"
        ) from exc
    finally:
        modules = _modules.registered()
        _modules.reset_registry()
    return Pipeline(modules, file)


def _user_line(exc: BaseException, file: Path) -> str:
    tb = exc.__traceback__
    line = ""
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line
