"""No CI system (a laptop, or a CI ciflow does not know): the `Provider` defaults."""

from __future__ import annotations

from .base import Provider

__all__ = ["Local"]


class Local(Provider):
    """Nothing detected: the slot comes from ``--slot`` or ``CIFLOW_SLOT``, the store from flags."""
