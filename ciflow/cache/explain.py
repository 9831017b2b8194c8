"""``ciflow cache explain M``: the parts of a module's key now, and what the cache holds."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ..errors import CiflowError
from ..model.pipeline import Pipeline
from ..stores.base import Store
from .entries import EntryStore
from .key import NO_PRODUCT, KeyParts, Product, key_parts, what_changed

__all__ = ["explain_lines", "known_product"]

_FILES_SHOWN = 20


def known_product(entries: EntryStore, pipeline: Pipeline, name: str) -> Product | None:
    """``name``'s product as its newest cache entry recorded it; None if not known."""
    if not pipeline.modules[name].cache:
        return None
    parts = entries.last_parts(name)
    return None if parts is None else entries.marker(name, parts.key())


def explain_lines(store: Store, pipeline: Pipeline, name: str) -> Iterator[str]:
    """The lines `ciflow cache explain` prints for module ``name``."""
    mod = pipeline.modules[name]
    entries = EntryStore(store)
    deps: dict[str, Product] = {}
    unknown: list[str] = []
    for dep in mod.depends_on:
        found = known_product(entries, pipeline, dep.name) if dep.name in pipeline.modules else None
        if found is None:
            unknown.append(dep.name)
        deps[dep.name] = found or NO_PRODUCT
    params = pipeline.bindings[name].dep_params
    parts = key_parts(mod, params, root=pipeline.folder, environ=os.environ, deps=deps)
    yield f"module    {name}" + ("" if mod.cache else " (cache=False: never looked up)")
    yield f"cache     {store.url}"
    yield f"key       {parts.key()}"
    yield from _part_lines(parts, unknown)
    try:
        entry = entries.read(name, parts.key())
        verdict = None if entry is None else f"hit: an entry saves {entry.duration:.2f}s"
        if verdict is None:
            verdict = f"miss: {what_changed(entries.last_parts(name), parts)}"
    except (CiflowError, ValueError) as exc:
        verdict = f"miss: its entry cannot be used ({exc})"
    yield f"verdict   {verdict}"


def _part_lines(parts: KeyParts, unknown: list[str]) -> Iterator[str]:
    yield f"code      {parts.code} (the function's source, decorators and comments left out)"
    yield f"spec      {parts.spec} (depends_on, parameters, inputs, outputs and env names)"
    yield f"platform  {parts.platform}"
    yield f"format    {parts.format}"
    for var, digest in parts.env.items():
        yield f"env       {var} = sha256:{digest} (the value is never stored)"
    yield f"inputs    {len(parts.inputs)} file(s)"
    for path, what in list(parts.inputs.items())[:_FILES_SHOWN]:
        yield f"  {path}  {what[:2]}{what[2:14]}"
    if len(parts.inputs) > _FILES_SHOWN:
        yield f"  ... and {len(parts.inputs) - _FILES_SHOWN} more"
    for dep, (result, outputs) in parts.deps.items():
        note = " (not known until it runs: no cache entry)" if dep in unknown else ""
        yield f"dependency {dep}: result {result[:16]} outputs {outputs[:16]}{note}"
