"""Pause the cyclic garbage collector while building large, cycle-free structures."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic GC inside the block (restoring its previous state after).

    Building a pipeline of thousands of modules allocates many long-lived objects and no
    garbage; without this, repeated full collections rescan them all (a third of the time).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
