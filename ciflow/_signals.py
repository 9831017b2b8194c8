"""Route SIGINT and SIGTERM to a handler for the duration of a run (main thread only)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["catching_signals"]


@contextmanager
def catching_signals(handler: Callable[[int], None], enabled: bool = True) -> Iterator[None]:
    """Call ``handler(signum)`` on SIGINT/SIGTERM inside the block; restore the old handlers.

    Does nothing off the main thread (Python only delivers signals there) or when disabled.
    The handler runs between bytecodes of the main thread: keep it to setting flags.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        handler(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
