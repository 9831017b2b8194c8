"""What a run prints while it runs: a line per event, and a live progress line on a terminal.

Every line goes through the secret masker. The engine calls these methods from many threads;
one lock keeps lines whole.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from ..execution.capture import real
from ..execution.masking import MASKER, Masker
from ..model.outcome import ModuleRecord, Outcome

if TYPE_CHECKING:
    from ..model.outcome import RunResult
    from ..providers.base import Provider

__all__ = ["Console"]

_COLORS = {
    Outcome.SUCCEEDED: "32",
    Outcome.CACHED: "32",
    Outcome.SKIPPED: "33",
    Outcome.IGNORED_FAILURE: "33",
    Outcome.FAILED: "31",
    Outcome.TIMED_OUT: "31",
    Outcome.DEPENDENCY_FAILED: "31",
    Outcome.CANCELLED: "31",
}

_PLAIN = {o: o.value.replace("_", " ") for o in Outcome}
_GROUP_LIMIT = 5000  # lines kept per module before a partial group is printed


_COLORED = {o: f"\x1b[{_COLORS[o]}m{_PLAIN[o]}\x1b[0m" for o in Outcome}


def format_duration(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``, ``1h02m``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


class Console:
    """Prints run events to ``stream`` (stdout by default).

    ``live`` (default: the stream is a terminal and ``CI`` is unset) keeps a progress line at the
    bottom; otherwise every event is one plain line. ``verbose=False`` hides module output lines.
    ``provider`` (default: the CI system detected, see `ciflow.providers`) decides the log syntax:
    where it has log groups (GitHub's ``::group::``, GitLab's sections, Buildkite's ``---``) each
    module's output is held back and printed as one group when the module ends, so parallel
    modules do not interleave; where it has annotations (GitHub's ``::error``) failures get one.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        live: bool | None = None,
        color: bool | None = None,
        verbose: bool = True,
        masker: Masker = MASKER,
        provider: Provider | None = None,
    ) -> None:
        # the real stream, not the capture that routes module prints back into this console
        self.stream = real(stream if stream is not None else sys.stdout)
        tty = _isatty(self.stream)
        self.live = tty and not os.environ.get("CI") if live is None else live
        self.color = (tty and not os.environ.get("NO_COLOR")) if color is None else color
        self.verbose = verbose
        self.masker = masker
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}
        self._done = 0
        self._total = 0
        self._status = ""
        self._last_draw = 0.0
        self._started = time.monotonic()
        self._dirty = False
        if provider is None:
            from ..providers.registry import current

            provider = current()
        self.provider = provider
        self.grouped = provider.group("", []) is not None
        self._groups: dict[str, list[str]] = {}
        self._continued: set[str] = set()
        self.sources: dict[str, tuple[str, int]] = {}  # module -> (file, line) for annotations

    # events the engine reports ------------------------------------------------

    def run_started(self, run_id: str, total: int, jobs: int) -> None:
        self._total = total
        self._started = time.monotonic()
        self._line(f"ciflow: run {run_id}: {total} module(s), up to {jobs} at a time")

    def module_started(self, name: str, attempt: int) -> None:
        if self.live:
            with self._lock:
                self._running[name] = time.monotonic()
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._line(f"[{name}] started{again}")

    def output(self, module: str, line: str) -> None:
        if not self.verbose:
            return
        if self.grouped:
            with self._lock:
                group = self._groups.setdefault(module, [])
                group.append(line)
                if len(group) < _GROUP_LIMIT:
                    return
                del self._groups[module]
            self._group(module, group, partial=True)
            return
        self._line(f"[{module}] {line}")

    def module_retry(self, name: str, attempt: int, delay: float, error: str) -> None:
        if self.live:
            with self._lock:
                self._running.pop(name, None)
        first = error.splitlines()[0] if error else ""
        self._line(f"[{name}] attempt {attempt} failed ({first}); retrying in {delay:.1f}s")

    def module_finished(self, record: ModuleRecord) -> None:
        if self.live:
            with self._lock:
                self._running.pop(record.name, None)
                self._done += 1
        outcome = record.outcome or Outcome.CANCELLED
        text = (_COLORED if self.color else _PLAIN)[outcome]
        if record.start is not None:
            text += f" in {format_duration(record.duration)}"
        if outcome is Outcome.SKIPPED and record.skip_reason:
            text += f": {record.skip_reason}"
        elif record.error:
            text += f": {record.error.splitlines()[0]}"
        if record.cache == "hit":
            text += f" (saved {format_duration(record.saved)})"
        elif record.cache:
            text += f" (cache {record.cache})"
        if self.grouped:
            with self._lock:
                group = self._groups.pop(record.name, [])
            if group:
                self._group(record.name, group, partial=False)
        if outcome in (Outcome.FAILED, Outcome.TIMED_OUT) and record.error:
            title = f"{record.name} {outcome.value.replace('_', ' ')}"
            mask = self.masker.mask  # before the provider escapes: escaping hides secrets from it
            note = self.provider.annotation(
                mask(title), mask(record.error), self.sources.get(record.name)
            )
            if note is not None:
                self._line(note)
        self._line(f"[{record.name}] {text}")

    def message(self, text: str) -> None:
        self._line(f"ciflow: {text}")

    def tick(self) -> None:
        """Flush written lines; redraw the live progress line (at most a few times a second).

        The engine calls this at least every 50 ms, so lines reach a CI log promptly without
        one system call per line.
        """
        if not self.live:
            if self._dirty:
                with self._lock:
                    self._dirty = False
                    self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_draw < 0.2:
            return
        with self._lock:
            self._draw(now)

    def run_finished(self, result: RunResult) -> None:
        with self._lock:
            self._clear()
            self._status = ""
            self._dirty = False
            self.stream.flush()

    def print(self, text: str = "") -> None:
        """Print text (e.g. the summary) as it is, masked, without the progress line."""
        with self._lock:
            self._clear()
            self.stream.write(self.masker.mask(text) + "\n")
            self.stream.flush()

    def _group(self, module: str, lines: list[str], partial: bool) -> None:
        more = " (continued)" if module in self._continued else ""
        if partial:
            self._continued.add(module)
        else:
            self._continued.discard(module)
        body = [f"[{module}] {line}" for line in lines]
        self._line("\n".join(self.provider.group(f"{module}{more}", body) or body))

    # drawing ------------------------------------------------------------------

    def _line(self, text: str) -> None:
        text = self.masker.mask(text)
        with self._lock:
            if self.live:
                self._clear()
                self.stream.write(text + "\n")
                self._draw(time.monotonic())
            else:
                self.stream.write(text + "\n")
                self._dirty = True

    def _clear(self) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[2K")

    def _draw(self, now: float) -> None:
        self._last_draw = now
        names = sorted(self._running, key=self._running.__getitem__)
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        elapsed = format_duration(now - self._started)
        status = f"[{self._done}/{self._total} done, {elapsed}] running: {shown or '-'}"
        width = _width(self.stream)
        if len(status) > width - 1:
            status = status[: width - 2] + "…"
        self._clear()
        self.stream.write(self.masker.mask(status))
        self._status = status
        self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80
