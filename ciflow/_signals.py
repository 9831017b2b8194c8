"""Route the signals that stop a job (SIGINT, SIGTERM, SIGHUP) to a handler, main thread only.

CI systems cancel a job with SIGINT and then SIGTERM (GitHub), SIGTERM (Kubernetes, GitLab), and a
closed terminal sends SIGHUP: ciflow treats all three like Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["STOP_SIGNALS", "catching_signals", "interrupting"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def catching_signals(handler: Callable[[int], None], enabled: bool = True) -> Iterator[None]:
    """Call ``handler(signum)`` on a stop signal inside the block; restore the old handlers.

    Once a stop signal arrived, the block ends with the stop signals ignored instead: the
    process is on its way out, and a second signal (GitHub sends SIGTERM after SIGINT) must not
    kill it before it writes its last records and exits with its own code.
    Does nothing off the main thread (Python only delivers signals there) or when disabled.
    The handler runs between bytecodes of the main thread: keep it to setting flags.
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        handler(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_IGN if received else old)


def _interrupt(signum: int) -> None:
    raise KeyboardInterrupt


@contextmanager
def interrupting() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise `KeyboardInterrupt` as SIGINT does.

    For commands whose clean-up already runs on Ctrl-C (``finally`` blocks, ``with`` folders).
    """
    with catching_signals(_interrupt):
        yield
