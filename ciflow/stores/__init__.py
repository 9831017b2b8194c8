"""Stores: the one storage protocol every distributed feature is built on.

`open_store(url)` picks the backend by URL scheme (``file://PATH`` today); each backend lives in
its own file and imports its client library only when used.
"""

from __future__ import annotations

from .base import Store, StoreError, StoreStats, StoreUnavailable, open_store

__all__ = ["Store", "StoreError", "StoreStats", "StoreUnavailable", "open_store"]
