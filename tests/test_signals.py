"""Stop signals: caught inside the block; once one arrived, ignored until the process exits."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, signal, time
from ciflow._signals import catching_signals
got = []
with catching_signals(got.append):
    pass
assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # nothing arrived: restored
with catching_signals(got.append):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
assert got == [signal.SIGINT], got
os.kill(os.getpid(), signal.SIGTERM)  # GitHub's SIGTERM after its SIGINT, while exiting
time.sleep(0.05)
print("still here", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
"""


def test_a_second_stop_signal_while_exiting_does_not_kill_the_process() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "still here True"
