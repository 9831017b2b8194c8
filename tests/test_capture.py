"""What module code prints: routed to the module's output, masked, closing stdout ignored."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

from ciflow.execution.capture import CapturedStream, install, real, routed
from ciflow.execution.masking import MASKER

PIPELINES = Path(__file__).parent / "pipelines"


def test_a_routed_thread_prints_lines_to_its_module_output() -> None:
    got: list[tuple[str, str]] = []
    with routed("m", lambda module, line: got.append((module, line))):
        print("one")
        print("two", "parts", sep="-")
        sys.stderr.write("err line\n")
        sys.stdout.write("no newline")
    assert got == [("m", "one"), ("m", "two-parts"), ("m", "err line"), ("m", "no newline")]
    assert isinstance(sys.stdout, CapturedStream)


def test_other_threads_pass_through_masked_whole_lines() -> None:
    under = io.StringIO()
    stream = CapturedStream(under, "stdout")
    MASKER.add("tok-123")
    got: list[str] = []

    def elsewhere() -> None:
        for piece in ("a ", "tok", "-123", " b\n", "tail tok-123"):
            stream.write(piece)  # split across writes, as print() splits its arguments
        stream.flush()

    with routed("m", lambda _module, line: got.append(line)):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
    assert under.getvalue() == "a *** b\ntail ***"
    assert got == []


def test_closing_the_captured_stream_is_ignored_and_real_unwraps() -> None:
    under = io.StringIO()
    stream = CapturedStream(under, "stdout")
    stream.close()
    assert not stream.closed and not under.closed
    stream.write("still here\n")
    assert under.getvalue() == "still here\n"
    assert real(stream) is under  # type: ignore[comparison-overlap]
    install()
    install()  # idempotent: never a capture of a capture
    assert not isinstance(real(sys.stdout), CapturedStream)


def _ciflow(*args: str, cwd: Path, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CIFLOW_TEST_SECRET"}
    if secret is not None:
        env["CIFLOW_TEST_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "ciflow", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_run_captures_and_masks_print_and_stderr_of_modules(tmp_path: Path) -> None:
    secret = "s3cr3t-print-pa%40ss"
    done = _ciflow("run", "-k", "-f", str(PIPELINES / "secrets.py"), cwd=tmp_path, secret=secret)
    text = done.stdout + done.stderr
    assert secret not in text
    assert "Traceback" not in text.replace("[masks_and_fails]", "")
    lines = done.stdout.splitlines()
    assert "[prints] printed ***" in lines
    assert "[prints] to stderr ***" in lines
    assert "[prints] partial ***" in lines
    assert "[closes] after close" in lines
    assert any(line.startswith("[closes] succeeded") for line in lines)
    assert any(line.startswith("[masks_and_fails] failed") for line in lines)
    assert done.returncode == 1  # one module failed; every other line above was printed
