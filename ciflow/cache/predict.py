"""What the plan job knows from the cache: the modules it expects to hit, and run history.

`expected_hits` computes, in dependency order, the key of each ``cache=True`` module whose
dependencies are themselves expected hits (their products come from their entries' markers)
and checks the marker exists: one listing per module on a folder cache, one prefix lookup on
the Actions cache, no download. A module below one that must run cannot be predicted: its key
needs a result not known yet (docs/architecture.md, "The result cache").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import CiflowError
from ..model.pipeline import Pipeline
from ..planning.history import History
from ..stores.base import Store, StoreError
from .entries import EntryStore
from .history import load_history
from .key import Product, key_parts

__all__ = ["expected_hits", "merged_history"]


def expected_hits(store: Store, pipeline: Pipeline, names: Sequence[str]) -> set[str]:
    """The modules of ``names`` (dependency order) the cache is expected to have."""
    entries = EntryStore(store)
    selected = set(names)
    products: dict[str, Product] = {}
    for name in names:
        mod = pipeline.modules[name]
        if not mod.cache:
            continue
        deps = [d.name for d in mod.depends_on if d.name in selected]
        if any(d not in products for d in deps):
            continue
        try:
            parts = key_parts(
                mod, pipeline.bindings[name].dep_params, root=pipeline.folder,
                environ=os.environ, deps={d: products[d] for d in deps},
            )  # fmt: skip
            found = entries.marker(name, parts.key())
        except (CiflowError, StoreError):
            continue
        if found is not None:
            products[name] = found
    return set(products)


def merged_history(path: Path, store: Store | None) -> History:
    """The history file at ``path`` over the newest history in the cache ``store``.

    On a fresh CI checkout the file is absent and the cache's history is all there is; on a
    laptop the file (this machine's runs) wins for the modules it knows.
    """
    local = History.load(path)
    try:
        shared = load_history(store) if store is not None else None
    except StoreError:
        shared = None
    if shared is None:
        return local
    return History({**shared.modules, **local.modules})
