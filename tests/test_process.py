"""`run_command`, `Cancellation` and `kill_tree` against real subprocesses (Linux: /proc)."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import ciflow.execution.process
from ciflow.errors import CommandFailed, ModuleCancelled
from ciflow.execution.process import Cancellation, CommandResult, kill_tree, run_command

PY = sys.executable


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep SIGTERM -> SIGKILL escalation short so the tests stay fast."""
    monkeypatch.setattr(ciflow.execution.process, "KILL_GRACE", 0.5)


# helpers ------------------------------------------------------------------------------------


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat[stat.rfind(b")") + 2 :].split()[0]
    return state not in (b"Z", b"X")


def wait_dead(pid: int, limit: float = 5.0) -> bool:
    """Poll until ``pid`` is gone (signals are delivered asynchronously)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def wait_for(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def read_pid(path: Path, limit: float = 10.0) -> int:
    wait_for(lambda: path.exists() and path.read_text().strip().isdigit(), limit)
    return int(path.read_text())


@pytest.fixture
def reap_later() -> Iterator[list[int]]:
    """Pids a test started indirectly; SIGKILLed at teardown if a failing test left them."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Bounded:
    """Run ``run_command`` in a thread; if it outlives ``limit`` cancel it and fail the test.

    Tests that would hang on a bug fail in bounded time instead (and clean up after themselves).
    """

    def __init__(self, fn: Callable[[], Any], cancellation: Cancellation) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._fn = fn
        self._cancellation = cancellation
        self._thread = threading.Thread(target=self._target, daemon=True)
        self._thread.start()

    def _target(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.error = exc

    def result(self, limit: float = 20.0) -> Any:
        self._thread.join(limit)
        if self._thread.is_alive():
            self._cancellation.cancel("test watchdog")
            self._thread.join(10)
            pytest.fail(f"run_command did not return within {limit:g}s")
        if self.error is not None:
            raise self.error
        return self.value


def run(
    cmd: str | list[str],
    cwd: Path,
    *,
    lines: list[str] | None = None,
    cancellation: Cancellation | None = None,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> CommandResult:
    return run_command(
        cmd,
        cancellation=cancellation if cancellation is not None else Cancellation(),
        on_line=(lines.append if lines is not None else (lambda line: None)),
        cwd=cwd,
        env=env if env is not None else dict(os.environ),
        **kwargs,
    )


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# streaming and capture ----------------------------------------------------------------------


def test_on_line_receives_each_line_in_order(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(["seq", "1", "200"], tmp_path, lines=lines)
    assert lines == [str(i) for i in range(1, 201)]
    assert result.returncode == 0
    assert result.output == ""  # nothing kept without capture=True
    assert result.tail == tuple(str(i) for i in range(181, 201))  # the last 20 lines


def test_lines_are_streamed_while_the_command_runs(tmp_path: Path) -> None:
    """The child prints its second line only after on_line has seen the first one."""
    go = tmp_path / "go"
    child = script(
        tmp_path,
        "child.py",
        f"""
        import os, sys, time
        print("first", flush=True)
        deadline = time.monotonic() + 15
        while not os.path.exists({str(go)!r}):
            if time.monotonic() > deadline:
                print("never saw first line handled", flush=True)
                sys.exit(3)
            time.sleep(0.01)
        print("second", flush=True)
        """,
    )
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "first":
            go.touch()

    cancellation = Cancellation()
    job = Bounded(
        lambda: run_command(
            [PY, str(child)],
            cancellation=cancellation,
            on_line=on_line,
            cwd=tmp_path,
            env=dict(os.environ),
        ),
        cancellation,
    )
    result = job.result()
    assert lines == ["first", "second"]
    assert result.returncode == 0


def test_capture_returns_whole_output_with_stderr_merged(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run("echo out; echo err >&2; printf 'no newline'", tmp_path, lines=lines, capture=True)
    assert result.output == "out\nerr\nno newline"
    assert lines == ["out", "err", "no newline"]
    assert result.tail == ("out", "err", "no newline")
    assert result.command == "echo out; echo err >&2; printf 'no newline'"


def test_crlf_and_invalid_utf8_are_handled(tmp_path: Path) -> None:
    lines: list[str] = []
    run(
        [PY, "-c", "import sys; sys.stdout.buffer.write(b'a\\r\\nb\\xff\\n')"],
        tmp_path,
        lines=lines,
    )
    assert lines == ["a", "b\ufffd"]


# failures -----------------------------------------------------------------------------------


def test_nonzero_exit_raises_command_failed_with_code_and_tail(tmp_path: Path) -> None:
    lines: list[str] = []
    with pytest.raises(CommandFailed) as info:
        run("seq 1 30; exit 3", tmp_path, lines=lines)
    err = info.value
    assert err.returncode == 3
    assert err.command == "seq 1 30; exit 3"
    assert err.tail == [str(i) for i in range(11, 31)]
    assert "exit code 3" in str(err) and "seq 1 30; exit 3" in str(err)
    assert str(err).splitlines()[-1] == "30"
    assert err.exit_code == 1
    assert lines == [str(i) for i in range(1, 31)]  # still streamed before failing


def test_check_false_returns_the_exit_code(tmp_path: Path) -> None:
    result = run(["sh", "-c", "echo oops; exit 5"], tmp_path, check=False, capture=True)
    assert result.returncode == 5
    assert result.output == "oops"
    assert result.tail == ("oops",)
    assert result.command == "sh -c 'echo oops; exit 5'"


def test_missing_executable_is_command_failed_127(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        run(["ciflow-no-such-program-xyz", "--flag"], tmp_path)
    assert info.value.returncode == 127
    assert "ciflow-no-such-program-xyz --flag" in str(info.value)
    assert "cannot start" in str(info.value)
    assert any("No such file" in line for line in info.value.tail)


def test_missing_executable_through_the_shell_is_127(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        run("ciflow-no-such-program-xyz", tmp_path)
    assert info.value.returncode == 127
    assert any("not found" in line for line in info.value.tail)


def test_missing_cwd_is_reported_not_raised_raw(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        run(["true"], tmp_path / "does-not-exist")
    assert info.value.returncode == 127


# list vs shell, stdin, cwd, env ---------------------------------------------------------------


def test_argument_list_is_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    lines: list[str] = []
    run(["echo", "$HOME; echo injected", "*"], tmp_path, lines=lines)
    assert lines == ["$HOME; echo injected *"]


def test_shell_string_is_interpreted_by_the_shell(tmp_path: Path) -> None:
    lines: list[str] = []
    (tmp_path / "a.txt").write_text("")
    env = {**os.environ, "GREETING": "hello"}
    run("echo $GREETING; echo two | tr a-z A-Z; echo *.txt", tmp_path, lines=lines, env=env)
    assert lines == ["hello", "TWO", "a.txt"]


def test_list_elements_are_converted_to_strings(tmp_path: Path) -> None:
    lines: list[str] = []
    run(["echo", 42, tmp_path / "x"], tmp_path, lines=lines)  # type: ignore[list-item]
    assert lines == [f"42 {tmp_path / 'x'}"]


def test_stdin_is_fed_to_the_command(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run(["cat"], tmp_path, lines=lines, stdin="hello\nwörld\n")
    assert lines == ["hello", "wörld"]
    assert result.returncode == 0


def test_without_stdin_the_command_reads_eof(tmp_path: Path) -> None:
    cancellation = Cancellation()
    lines: list[str] = []
    job = Bounded(
        lambda: run(["cat"], tmp_path, lines=lines, cancellation=cancellation), cancellation
    )
    assert job.result().returncode == 0  # `cat` did not wait on the terminal
    assert lines == []


def test_cwd_is_used(tmp_path: Path) -> None:
    sub = tmp_path / "sub dir"
    sub.mkdir()
    lines: list[str] = []
    run([PY, "-c", "import os; print(os.getcwd())"], sub, lines=lines)
    assert lines == [os.path.realpath(sub)]


def test_env_is_passed_exactly(tmp_path: Path) -> None:
    lines: list[str] = []
    env = {"PATH": os.environ["PATH"], "CIFLOW_ONLY": "yes please"}
    run(
        [PY, "-c", "import os, json; print(json.dumps(sorted(os.environ)))"],
        tmp_path,
        lines=lines,
        env=env,
    )
    names = set(json.loads(lines[0]))
    assert "CIFLOW_ONLY" in names
    assert "HOME" not in names or "HOME" not in os.environ
    run(["sh", "-c", 'echo "$CIFLOW_ONLY"'], tmp_path, lines=lines, env=env)
    assert lines[-1] == "yes please"


# timeouts ------------------------------------------------------------------------------------


def test_timeout_kills_the_command(tmp_path: Path) -> None:
    lines: list[str] = []
    cancellation = Cancellation()
    job = Bounded(
        lambda: run(
            "echo started; sleep 300", tmp_path, lines=lines, cancellation=cancellation, timeout=0.3
        ),
        cancellation,
    )
    with pytest.raises(CommandFailed) as info:
        job.result(30)
    assert str(info.value).startswith("command timed out after 0.3s: ")
    assert info.value.tail[0] == "started"
    assert info.value.returncode == -signal.SIGTERM
    assert not cancellation.cancelled  # a command timeout is not a module cancellation


def test_timeout_kills_grandchildren_too(tmp_path: Path, reap_later: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    cancellation = Cancellation()
    job = Bounded(
        lambda: run(
            f"sleep 300 & echo $! > {pidfile}; wait",
            tmp_path,
            cancellation=cancellation,
            timeout=0.5,
        ),
        cancellation,
    )
    grandchild = read_pid(pidfile)
    reap_later.append(grandchild)
    with pytest.raises(CommandFailed):
        job.result(30)
    assert wait_dead(grandchild)


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    termed = tmp_path / "got-sigterm"
    stubborn = f"trap 'touch {termed}' TERM; while :; do sleep 0.05; done"
    cancellation = Cancellation()
    job = Bounded(
        lambda: run(["sh", "-c", stubborn], tmp_path, cancellation=cancellation, timeout=0.3),
        cancellation,
    )
    with pytest.raises(CommandFailed) as info:
        job.result(30)
    assert info.value.returncode == -signal.SIGKILL
    assert termed.exists()  # SIGTERM came first, SIGKILL after the grace period


def test_timeout_holds_while_a_background_process_keeps_the_output_open(
    tmp_path: Path,
) -> None:
    """The shell exits at once and a background child keeps stdout open: the timeout still
    holds (run_command does not wait 60 s for the background child)."""
    cancellation = Cancellation()
    job = Bounded(
        lambda: run("sleep 60 & echo started", tmp_path, cancellation=cancellation, timeout=0.5),
        cancellation,
    )
    with pytest.raises(CommandFailed) as info:
        job.result(2.5)
    assert str(info.value).startswith("command timed out after 0.5s")


def test_timeout_holds_while_stdin_is_being_written(tmp_path: Path) -> None:
    """A command that does not read its (large) stdin must not block the timeout."""
    cancellation = Cancellation()
    job = Bounded(
        lambda: run(
            ["sleep", "60"], tmp_path, cancellation=cancellation, timeout=0.5, stdin="x" * (4 << 20)
        ),
        cancellation,
    )
    with pytest.raises(CommandFailed) as info:
        job.result(2.5)
    assert "command timed out after" in str(info.value)
    # The unread stdin pipe may be left open (see test_run_command_closes_stdin_...): collect
    # it here so its ResourceWarning does not fail an unrelated later test.
    _collect_quietly()


# cancellation --------------------------------------------------------------------------------


GRANDPARENT = """
import subprocess, sys, time
grandchild = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(300)"],
    start_new_session={new_session},
)
with open({pidfile!r}, "w") as fh:
    fh.write(str(grandchild.pid))
print("spawned", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("new_session", [False, True], ids=["same-group", "own-session"])
def test_cancel_from_another_thread_kills_the_whole_tree(
    tmp_path: Path, reap_later: list[int], new_session: bool
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = script(
        tmp_path, "parent.py", GRANDPARENT.format(new_session=new_session, pidfile=str(pidfile))
    )
    lines: list[str] = []
    cancellation = Cancellation()
    job = Bounded(
        lambda: run([PY, str(child)], tmp_path, lines=lines, cancellation=cancellation),
        cancellation,
    )
    grandchild = read_pid(pidfile)
    reap_later.append(grandchild)
    wait_for(lambda: lines == ["spawned"])
    assert alive(grandchild)

    threading.Thread(target=cancellation.cancel, args=("stop it",)).start()
    with pytest.raises(ModuleCancelled) as info:
        job.result(30)
    assert info.value.reason == "stop it"
    assert cancellation.cancelled and cancellation.reason == "stop it"
    assert wait_dead(grandchild), "the grandchild survived the cancellation"


def test_cancel_kills_sh_background_jobs(tmp_path: Path, reap_later: list[int]) -> None:
    pids = tmp_path / "pids"
    cancellation = Cancellation()
    job = Bounded(
        lambda: run(
            f"sleep 300 & echo $! > {pids}.1; sleep 300 & echo $! > {pids}.2; wait",
            tmp_path,
            cancellation=cancellation,
        ),
        cancellation,
    )
    background = [read_pid(Path(f"{pids}.1")), read_pid(Path(f"{pids}.2"))]
    reap_later.extend(background)
    cancellation.cancel("fail-fast")
    with pytest.raises(ModuleCancelled):
        job.result(30)
    assert all(wait_dead(pid) for pid in background)


def test_cancel_escalates_to_sigkill_for_a_child_ignoring_sigterm(
    tmp_path: Path, reap_later: list[int]
) -> None:
    termed = tmp_path / "got-sigterm"
    child = script(
        tmp_path,
        "stubborn.py",
        f"""
        import os, pathlib, signal, time
        signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(termed)!r}).touch())
        print(os.getpid(), flush=True)
        for _ in range(3000):
            time.sleep(0.1)
        """,
    )
    lines: list[str] = []
    cancellation = Cancellation()
    job = Bounded(
        lambda: run([PY, str(child)], tmp_path, lines=lines, cancellation=cancellation),
        cancellation,
    )
    wait_for(lambda: len(lines) == 1)
    pid = int(lines[0])
    reap_later.append(pid)
    cancellation.cancel("stop")
    with pytest.raises(ModuleCancelled):
        job.result(30)
    assert termed.exists()  # it was asked nicely first
    assert wait_dead(pid)


def test_cancel_kills_a_grandchild_in_its_own_session_that_ignores_sigterm(
    tmp_path: Path, reap_later: list[int]
) -> None:
    """The child dies on SIGTERM at once; its grandchild (own session) ignores SIGTERM.

    It was a descendant when the cancel came, so it must get SIGKILL after the grace period.
    """
    pidfile = tmp_path / "grandchild.pid"
    child = script(
        tmp_path,
        "parent.py",
        f"""
        import subprocess, sys, time
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        code += "open({str(pidfile)!r}, 'w').write('ready'); time.sleep(300)"
        grandchild = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                                      stdout=subprocess.DEVNULL)
        print(grandchild.pid, flush=True)
        time.sleep(300)
        """,
    )
    lines: list[str] = []
    cancellation = Cancellation()
    job = Bounded(
        lambda: run([PY, str(child)], tmp_path, lines=lines, cancellation=cancellation),
        cancellation,
    )
    wait_for(lambda: len(lines) == 1 and pidfile.exists() and pidfile.read_text() == "ready")
    grandchild = int(lines[0])
    reap_later.append(grandchild)
    cancellation.cancel("stop")
    with pytest.raises(ModuleCancelled):
        job.result(30)
    assert wait_dead(grandchild, limit=2.0), "grandchild ignoring SIGTERM survived the cancel"


def test_cancel_before_start_raises_without_starting(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    cancellation = Cancellation()
    cancellation.cancel("too late")
    with pytest.raises(ModuleCancelled) as info:
        run(["touch", str(marker)], tmp_path, cancellation=cancellation)
    assert info.value.reason == "too late"
    assert not marker.exists()


def test_process_attached_after_cancel_is_killed(tmp_path: Path) -> None:
    cancellation = Cancellation()
    cancellation.cancel("gone")
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        cancellation.attach(proc)
        assert proc.wait(timeout=10) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_detached_process_is_not_killed_by_cancel(tmp_path: Path) -> None:
    cancellation = Cancellation()
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        cancellation.attach(proc)
        cancellation.detach(proc)
        cancellation.cancel("bye")
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)
    finally:
        proc.kill()
        proc.wait()


def test_on_cancel_callbacks() -> None:
    cancellation = Cancellation()
    calls: list[str] = []
    cancellation.on_cancel(lambda: calls.append("early"))
    assert calls == []
    assert not cancellation.cancelled and cancellation.cancelled_at is None
    cancellation.check()  # not cancelled: no exception

    cancellation.cancel("first reason")
    assert calls == ["early"]
    assert cancellation.cancelled and cancellation.cancelled_at is not None

    cancellation.cancel("second reason")  # cancelling twice changes nothing
    assert calls == ["early"]
    assert cancellation.reason == "first reason"

    cancellation.on_cancel(lambda: calls.append("late"))  # already cancelled: called at once
    assert calls == ["early", "late"]
    with pytest.raises(ModuleCancelled) as info:
        cancellation.check()
    assert info.value.reason == "first reason"


def test_on_cancel_runs_in_the_cancelling_thread() -> None:
    cancellation = Cancellation()
    seen: list[threading.Thread] = []
    cancellation.on_cancel(lambda: seen.append(threading.current_thread()))
    canceller = threading.Thread(target=cancellation.cancel, args=("x",))
    canceller.start()
    canceller.join()
    assert seen == [canceller]


def test_module_cancelled_is_not_an_exception() -> None:
    cancellation = Cancellation()
    cancellation.cancel("stop")
    with pytest.raises(ModuleCancelled):
        try:
            cancellation.check()
        except Exception:  # module code catching errors must not swallow a cancel
            pytest.fail("ModuleCancelled was caught by `except Exception`")


# kill_tree -----------------------------------------------------------------------------------


def test_kill_tree_kills_process_and_descendants(tmp_path: Path, reap_later: list[int]) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = script(
        tmp_path, "parent.py", GRANDPARENT.format(new_session=True, pidfile=str(pidfile))
    )
    proc = subprocess.Popen([PY, str(child)], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        grandchild = read_pid(pidfile)
        reap_later.append(grandchild)
        kill_tree(proc)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert wait_dead(grandchild)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_kill_tree_on_an_exited_process_is_harmless(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"], start_new_session=True)
    proc.wait()
    kill_tree(proc, signal.SIGTERM)
    kill_tree(proc)
    assert proc.returncode == 0


# resources -----------------------------------------------------------------------------------


def _collect_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _resource_warnings(fn: Callable[[], object]) -> list[str]:
    _collect_quietly()  # leftovers of earlier tests are not this call's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fn()
        except (CommandFailed, ModuleCancelled):
            pass
        gc.collect()
    return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


def test_run_command_closes_its_pipes(tmp_path: Path) -> None:
    """BUG: proc.stdout is never closed; every command leaks a ResourceWarning, which
    `filterwarnings = error` turns into failures of whichever test runs next."""
    assert _resource_warnings(lambda: run(["echo", "hi"], tmp_path)) == []
    assert _resource_warnings(lambda: run("exit 4", tmp_path)) == []


def test_run_command_closes_stdin_when_the_command_does_not_read_it(tmp_path: Path) -> None:
    """BUG: after a BrokenPipeError writing stdin, proc.stdin stays open."""
    assert _resource_warnings(lambda: run(["true"], tmp_path, stdin="x" * (4 << 20))) == []
