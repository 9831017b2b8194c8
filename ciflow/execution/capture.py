"""What module code writes to ``sys.stdout`` and ``sys.stderr``: captured, masked, attributed.

`run_attempt` calls a module's function inside `routed`: while it runs, every line the
module's thread prints (``print()``, ``sys.stderr.write``, ``logging`` to a stream handler
made during the module) goes to the module's output callback, the same path as ``ctx.run``
output, so it is masked, prefixed with the module's name and grouped like the rest. Writes
from other threads pass through to the real stream, masked line by line. Closing either
stream from module code is ignored (it would break every later line of the run).

Not captured: writes to the file descriptors themselves (``os.write(1, ...)``, C extensions,
subprocesses started without ``ctx.run``): they reach the log unmasked.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .masking import MASKER

__all__ = ["CapturedStream", "install", "real", "routed"]

Output = Callable[[str, str], None]

_local = threading.local()
_install_lock = threading.Lock()


class _Route:
    __slots__ = ("module", "output", "pending")

    def __init__(self, module: str, output: Output) -> None:
        self.module = module
        self.output = output
        self.pending = {"stdout": "", "stderr": ""}


class CapturedStream:
    """Stands in for ``sys.stdout`` or ``sys.stderr``: routes module lines, masks the rest."""

    def __init__(self, underlying: TextIO, name: str) -> None:
        self.underlying = underlying
        self.name = name
        self._lock = threading.Lock()
        self._pending = ""  # a partial line of an unrouted thread, held to mask it whole

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        route: _Route | None = getattr(_local, "route", None)
        if route is not None:
            lines = (route.pending[self.name] + text).split("\n")
            route.pending[self.name] = lines.pop()
            for line in lines:
                route.output(route.module, line.rstrip("\r"))
            return len(text)
        with self._lock:
            lines = (self._pending + text).split("\n")
            self._pending = lines.pop()
            if lines:
                self.underlying.write(MASKER.mask("\n".join(lines)) + "\n")
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if getattr(_local, "route", None) is not None:
            return  # a module's partial line waits for its newline or the module's end
        with self._lock:
            if self._pending:
                self.underlying.write(MASKER.mask(self._pending))
                self._pending = ""
            self.underlying.flush()

    def close(self) -> None:
        """Ignored: module code that closes stdout must not end the run's output."""

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def isatty(self) -> bool:
        try:
            return self.underlying.isatty()
        except (AttributeError, ValueError):
            return False

    def fileno(self) -> int:
        return self.underlying.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.underlying, "encoding", "utf-8") or "utf-8"

    @property
    def errors(self) -> str | None:
        return getattr(self.underlying, "errors", None)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.underlying, attr)


def install() -> None:
    """Put `CapturedStream` in front of ``sys.stdout`` and ``sys.stderr`` (once; idempotent)."""
    if isinstance(sys.stdout, CapturedStream) and isinstance(sys.stderr, CapturedStream):
        return  # every attempt calls this: no lock once both are in place
    with _install_lock:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            if current is not None and not isinstance(current, CapturedStream):
                setattr(sys, name, CapturedStream(current, name))


def real(stream: TextIO) -> TextIO:
    """The stream behind ``stream`` if it is a `CapturedStream` (what the console writes to)."""
    while isinstance(stream, CapturedStream):
        stream = stream.underlying
    return stream


@contextmanager
def routed(module: str, output: Output) -> Iterator[None]:
    """Send what this thread prints to ``output(module, line)`` for the block."""
    install()
    previous: _Route | None = getattr(_local, "route", None)
    route = _Route(module, output)
    _local.route = route
    try:
        yield
    finally:
        _local.route = previous
        for rest in route.pending.values():
            if rest:
                output(module, rest.rstrip("\r"))
