"""Subprocesses for ``ctx.run``: streamed line by line, killed as a whole tree on cancel.

Each command starts in a new session (process group) so that a timeout, fail-fast or Ctrl-C can
signal it and every descendant: SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import collections
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandFailed, ModuleCancelled

__all__ = ["Cancellation", "CommandResult", "kill_tree", "run_command"]

KILL_GRACE = float(os.environ.get("CIFLOW_KILL_GRACE", "2.0"))
_TAIL_LINES = 20
_POSIX = os.name == "posix"


class Cancellation:
    """The cancel switch of one module attempt; processes attached to it die with it."""

    __slots__ = ("_lock", "_procs", "_callbacks", "reason", "cancelled_at", "signalled")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._callbacks: list[Callable[[], None]] = []
        self.reason: str | None = None
        self.cancelled_at: float | None = None
        self.signalled: set[int] = set()  # every pid sent SIGTERM, for the SIGKILL round

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        """Cancel once: remember why and send SIGTERM to every attached process tree."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            self.cancelled_at = time.monotonic()
            procs = list(self._procs)
            callbacks = list(self._callbacks)
        for proc in procs:
            self.signalled.update(kill_tree(proc, signal.SIGTERM))
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the cancelling thread) when cancelled; at once if already."""
        with self._lock:
            if self.reason is None:
                self._callbacks.append(callback)
                return
        callback()

    def check(self) -> None:
        """Raise `ModuleCancelled` if cancelled; call it at safe points in long Python loops."""
        if self.reason is not None:
            raise ModuleCancelled(self.reason)

    def attach(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.add(proc)
            cancelled = self.reason is not None
        if cancelled:
            self.signalled.update(kill_tree(proc, signal.SIGTERM))

    def detach(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._procs.discard(proc)


def _descendants(pid: int) -> list[int]:
    """Child pids of ``pid``, transitively (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children[int(fields[1])].append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> list[int]:
    """Signal ``proc``, its process group and every descendant; return the pids signalled.

    Descendants that started their own session are found through /proc while they are still
    descendants; remember the returned pids to finish them off with `kill_pids` later.
    """
    if not _POSIX:
        subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return [proc.pid]
    pids = [proc.pid, *_descendants(proc.pid)]
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    kill_pids(pids, sig)
    return pids


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to each pid that still exists."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (Linux /proc; elsewhere a signal 0 probe)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


@dataclass(frozen=True)
class CommandResult:
    """What `ctx.run` returns: exit code, the full output if ``capture=True``, and its tail."""

    command: str
    returncode: int
    output: str
    tail: tuple[str, ...]


def _display(cmd: str | Sequence[str]) -> str:
    return cmd if isinstance(cmd, str) else shlex.join([str(c) for c in cmd])


def run_command(
    cmd: str | Sequence[str],
    *,
    cancellation: Cancellation,
    on_line: Callable[[str], None],
    cwd: Path,
    env: Mapping[str, str],
    check: bool = True,
    timeout: float | None = None,
    capture: bool = False,
    stdin: str | None = None,
) -> CommandResult:
    """Run ``cmd`` (a shell string or an argument list), stream its lines, obey cancellation."""
    shown = _display(cmd)
    cancellation.check()
    kwargs: dict[str, object] = {}
    if _POSIX:
        kwargs["start_new_session"] = True
    else:
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    try:
        proc = subprocess.Popen(
            cmd if isinstance(cmd, str) else [str(c) for c in cmd],
            shell=isinstance(cmd, str),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kwargs,  # type: ignore[call-overload]
        )
    except OSError as exc:
        message = f"cannot start: {exc.strerror or exc}"
        if check:
            raise CommandFailed(shown, 127, [message]) from None
        return CommandResult(shown, 127, message if capture else "", (message,))
    cancellation.attach(proc)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    captured: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            if capture:
                captured.append(line)
            on_line(line)

    reader = threading.Thread(target=pump, name=f"ciflow-output-{proc.pid}", daemon=True)
    reader.start()
    if stdin is not None:
        threading.Thread(
            target=_feed, args=(proc, stdin.encode()), name="ciflow-stdin", daemon=True
        ).start()
    try:
        timed_out = _wait(proc, reader, cancellation, timeout)
    except BaseException:
        kill_tree(proc, signal.SIGKILL)
        raise
    finally:
        cancellation.detach(proc)
    if not reader.is_alive() and proc.stdout is not None:
        proc.stdout.close()
    if cancellation.cancelled:
        raise ModuleCancelled(cancellation.reason or "cancelled")
    code = proc.returncode
    if timed_out:
        raise CommandFailed(shown, code, list(tail), reason=f"timed out after {timeout:g}s")
    if check and code != 0:
        raise CommandFailed(shown, code, list(tail))
    return CommandResult(shown, code, "\n".join(captured), tuple(tail))


def _wait(
    proc: subprocess.Popen[bytes],
    reader: threading.Thread,
    cancellation: Cancellation,
    timeout: float | None,
) -> bool:
    """Wait for the command and its output; on cancel or timeout stop the whole tree.

    SIGTERM first (sent by `Cancellation.cancel`, or here on timeout), SIGKILL to every pid
    signalled and the process group after ``KILL_GRACE``. Without a stop, a background
    descendant holding the output open is waited for, as a shell would. Returns whether the
    command timed out.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    doomed: set[int] = set()
    stopping_since: float | None = None
    timed_out = killed = False
    while True:
        exited = proc.poll() is not None
        if exited and not reader.is_alive():
            if stopping_since is None or killed:
                return timed_out
            if not any(_alive(pid) for pid in doomed | cancellation.signalled):
                return timed_out
        now = time.monotonic()
        if stopping_since is None:
            if cancellation.cancelled:
                stopping_since = cancellation.cancelled_at or now
            elif deadline is not None and now >= deadline:
                timed_out = True
                stopping_since = now
                doomed.update(kill_tree(proc, signal.SIGTERM))
        elif not killed and now - stopping_since >= KILL_GRACE:
            if not exited:
                doomed.update(kill_tree(proc, signal.SIGKILL))
            _kill_group(proc.pid)
            kill_pids(doomed | cancellation.signalled)
            killed = True
        elif killed and now - stopping_since >= 2 * KILL_GRACE:
            return timed_out  # something outside the tree holds the output open: give up on it
        if not exited:
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        elif reader.is_alive():
            reader.join(timeout=0.05)
        else:
            time.sleep(0.02)


def _feed(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
    except OSError:  # BrokenPipeError: the command does not read its input
        pass
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass


def _kill_group(pgid: int) -> None:
    if _POSIX:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
