"""Stores: the one storage protocol every distributed feature is built on.

`open_store(url)` picks the backend by URL scheme (see `ciflow.stores.registry`); each
backend lives in its own file and imports its client library only when used.
"""

from __future__ import annotations

from .base import Store, StoreError, StoreStats, StoreUnavailable
from .registry import StoreProfile, open_store, profile_for

__all__ = [
    "Store",
    "StoreError",
    "StoreProfile",
    "StoreStats",
    "StoreUnavailable",
    "open_store",
    "profile_for",
]
