"""A module's cache key: what it is made of, how it is computed, and what changed between two.

The parts (docs/architecture.md, "The result cache"): the function's code (its source without
decorators, comments or formatting; bytecode when there is no source), the spec fields that
change what it does, the content of its ``inputs``, its declared ``env`` variables (values
hashed, never stored), its dependencies' result and output digests (not their keys: early
cut-off), the platform when ``requires`` names an os or arch, and `FORMAT`.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import inspect
import json
import marshal
import os
import platform
import sys
import textwrap
import tokenize
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..model.module import Module
from ..model.requirements import normalize_arch, normalize_os
from .digest import SHORT, input_digests

__all__ = ["FORMAT", "UNKNOWN", "KeyParts", "Product", "code_digest", "key_parts", "what_changed"]

#: the cache format: part of every key, so a ciflow that stores entries differently misses
FORMAT = 1
#: the digests of a dependency's result and declared outputs, as its dependents' keys use them
Product = tuple[str, str]
#: a dependency that did not run (an optional one): the same placeholder everywhere
NO_PRODUCT: Product = ("none", "none")
#: a digest a dependency's record does not carry (written without a cache): never looked up
UNKNOWN = "unknown"
_SHOWN = 3  # changed inputs named in one miss reason


@dataclass(frozen=True)
class KeyParts:
    """Everything a module's cache key is made of; `key` is their digest."""

    module: str
    code: str
    spec: str
    platform: str
    inputs: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    format: int = FORMAT

    def key(self) -> str:
        """The key: SHA-256 of the canonical JSON of the parts (64 hex digits)."""
        return self._key

    @functools.cached_property
    def _key(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def to_json(self) -> str:
        data = {
            "module": self.module, "code": self.code, "spec": self.spec,
            "platform": self.platform, "inputs": self.inputs, "env": self.env,
            "deps": {d: list(p) for d, p in self.deps.items()}, "format": self.format,
        }  # fmt: skip
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> KeyParts:
        """Parse `to_json` output; `ValueError` if it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("key parts are not an object")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"key parts do not match this ciflow: {exc}") from None


_CODE: dict[Callable[..., Any], str] = {}


def code_digest(fn: Callable[..., Any]) -> str:
    """The digest of ``fn``'s code: the AST of its source, decorators left out."""
    found = _CODE.get(fn)
    if found is None:
        found = _CODE[fn] = hashlib.sha256(_code_text(fn)).hexdigest()[:SHORT]
    return found


def _code_text(fn: Callable[..., Any]) -> bytes:
    code = getattr(fn, "__code__", None)
    top = None if code is None else _functions(code.co_filename).get(code.co_firstlineno)
    node: ast.stmt
    if top is not None and code is not None and top.name == code.co_name:
        node = top
    else:  # not a plain function of a file: a lambda, a nested or generated function
        try:
            node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        except (OSError, TypeError, SyntaxError, IndexError):
            return b"bytecode " + (_bytecode(code) if code is not None else repr(fn).encode())
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node = copy.copy(node)
        node.decorator_list = []
    return ast.unparse(node).encode()


_FILES: dict[tuple[str, int, int], dict[int, ast.FunctionDef | ast.AsyncFunctionDef]] = {}


def _functions(filename: str) -> dict[int, ast.FunctionDef | ast.AsyncFunctionDef]:
    """The top-level functions of a source file by first line (a decorator's, if any); the
    file is parsed once per content (one parse for all the modules of a pipeline file)."""
    try:
        st = os.stat(filename)
    except OSError:
        return {}
    stamp = (filename, st.st_mtime_ns, st.st_size)
    found = _FILES.get(stamp)
    if found is None:
        try:
            with tokenize.open(filename) as fh:  # honours an encoding declaration
                tree = ast.parse(fh.read())
        except (OSError, SyntaxError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        found = _FILES[stamp] = {
            min([n.lineno, *(d.lineno for d in n.decorator_list)]): n
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
    return found


def _bytecode(code: types.CodeType) -> bytes:
    """Bytecode and constants, without the file name or line numbers."""
    consts = tuple(_bytecode(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return marshal.dumps((code.co_code, consts, code.co_names, code.co_varnames))


def spec_digest(mod: Module, params: tuple[tuple[str, str], ...]) -> str:
    """The spec fields that change what a module does (not timeouts, retries or tags)."""
    spec = {
        "depends_on": [[d.name, d.optional] for d in mod.depends_on],
        "params": [list(p) for p in params],
        "inputs": list(mod.inputs),
        "outputs": list(mod.outputs),
        "env": list(mod.env),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:SHORT]


def _platform(mod: Module) -> str:
    if not (mod.requires.os or mod.requires.arch):
        return "any"
    return f"{normalize_os(sys.platform)}/{normalize_arch(platform.machine())}"


def key_parts(
    mod: Module,
    params: tuple[tuple[str, str], ...],
    *,
    root: Path,
    environ: Mapping[str, str],
    deps: Mapping[str, Product],
) -> KeyParts:
    """The parts of ``mod``'s key now: its inputs read under ``root``, ``deps`` by name."""
    env = {
        var: hashlib.sha256(f"{var}\0{environ.get(var, chr(0))}".encode()).hexdigest()[:SHORT]
        for var in mod.env
    }
    return KeyParts(
        module=mod.name,
        code=code_digest(mod.fn),
        spec=spec_digest(mod, params),
        platform=_platform(mod),
        inputs=input_digests(root, mod.inputs) if mod.inputs else {},
        env=env,
        deps={d.name: list(deps.get(d.name, NO_PRODUCT)) for d in mod.depends_on},
    )


def what_changed(old: KeyParts | None, new: KeyParts) -> str:
    """Why ``new`` misses where ``old`` (the newest entry of the module) was stored."""
    if old is None:
        return "no entry"
    reasons: list[str] = []
    if old.format != new.format:
        reasons.append("ciflow's cache format changed")
    if old.code != new.code:
        reasons.append("code changed")
    if old.spec != new.spec:
        reasons.append("spec changed (depends_on, inputs, outputs or env)")
    if old.platform != new.platform:
        reasons.append(f"platform changed ({old.platform} -> {new.platform})")
    reasons += [f"env {v} changed" for v in sorted(set(old.env) | set(new.env))
                if old.env.get(v) != new.env.get(v)]  # fmt: skip
    reasons += _inputs_changed(old.inputs, new.inputs)
    for dep in sorted(set(old.deps) | set(new.deps)):
        was, now = old.deps.get(dep), new.deps.get(dep)
        if was is None or now is None:
            continue  # a spec change, named above
        if was[0] != now[0]:
            reasons.append(f"dependency {dep}'s result changed")
        if was[1] != now[1]:
            reasons.append(f"dependency {dep}'s outputs changed")
    return ", ".join(reasons) or "its entry is gone"


def _inputs_changed(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changes = [f"input {p} changed" for p in new if p in old and old[p] != new[p]]
    changes += [f"input {p} added" for p in new if p not in old]
    changes += [f"input {p} removed" for p in old if p not in new]
    if len(changes) > _SHOWN:
        return [*changes[:_SHOWN], f"and {len(changes) - _SHOWN} more input change(s)"]
    return changes
