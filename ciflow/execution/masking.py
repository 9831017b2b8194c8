"""Secret masking: every registered secret value is replaced by ``***`` in all ciflow output.

Register with ``ciflow.secret("NAME")`` (the value of an environment variable) or
``ctx.mask(value)``. The process-wide `MASKER` is applied by the console and the report.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

__all__ = ["MASKER", "Masker", "secret"]

MASK = "***"


class Masker:
    """A thread-safe set of secret strings and a fast `mask` over text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, value: str | None) -> None:
        """Mask ``value`` (and each of its lines) from now on; blank values are ignored."""
        if not value or not value.strip():
            return  # masking whitespace would garble every line
        parts = {value, *(line for line in value.splitlines() if line.strip())}
        with self._lock:
            if parts <= self._values:
                return
            self._values |= parts
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def mask(self, text: str) -> str:
        """Return ``text`` with every secret replaced by ``***``."""
        pattern = self._pattern
        if pattern is None:
            return text
        return pattern.sub(MASK, text)

    def mask_data(self, data: Any) -> Any:
        """Mask every string (and key) inside parsed JSON data."""
        if self._pattern is None:
            return data
        if isinstance(data, str):
            return self.mask(data)
        if isinstance(data, list):
            return [self.mask_data(item) for item in data]
        if isinstance(data, dict):
            return {self.mask(str(k)): self.mask_data(v) for k, v in data.items()}
        return data

    def clear(self) -> None:
        """Forget every secret (tests)."""
        with self._lock:
            self._values.clear()
            self._pattern = None


MASKER = Masker()


def secret(name: str) -> str | None:
    """Register the environment variable ``name`` as a secret and return its value (or None).

    Its value is masked in every line ciflow prints, including command output.
    """
    value = os.environ.get(name)
    MASKER.add(value)
    return value
