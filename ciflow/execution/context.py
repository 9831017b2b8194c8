"""The `Context` a module receives: run commands, log, read the environment, mask secrets."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..model.conditions import running_on_ci
from .masking import MASKER
from .process import Cancellation, CommandResult, run_command

__all__ = ["Context"]


class Context:
    """What a module sees of ciflow while it runs. One context per module attempt."""

    def __init__(
        self,
        module: str,
        *,
        workdir: Path,
        run_id: str,
        attempt: int = 1,
        cancellation: Cancellation | None = None,
        output: Callable[[str, str], None] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.module = module
        self.workdir = workdir
        self.run_id = run_id
        self.attempt = attempt
        self.cancellation = cancellation if cancellation is not None else Cancellation()
        self._output = output if output is not None else _print_line
        self._environ = environ
        self._env: dict[str, str] | None = None

    @property
    def env(self) -> dict[str, str]:
        """A private copy of the environment; changes apply to this module's commands only."""
        if self._env is None:
            self._env = dict(self._environ if self._environ is not None else os.environ)
        return self._env

    @property
    def cancelled(self) -> bool:
        """True once this module was cancelled (fail-fast, timeout, Ctrl-C)."""
        return self.cancellation.cancelled

    @property
    def on_ci(self) -> bool:
        """True on a CI machine (the ``CI`` variable is set)."""
        return running_on_ci(self.env)

    @functools.cached_property
    def branch(self) -> str | None:
        """The current branch: from the CI's variables, else from git, else None."""
        env = self.env
        from ..providers.registry import branch

        named = branch(env)
        if named:
            return named
        try:
            found = subprocess.run(
                ["git", "symbolic-ref", "--short", "-q", "HEAD"],  # works before a first commit
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        name = found.stdout.strip()
        return name if found.returncode == 0 and name else None  # None when detached

    def log(self, message: str) -> None:
        """Print a line under this module's name (secrets masked)."""
        for line in str(message).splitlines() or [""]:
            self._output(self.module, line)

    def mask(self, value: str) -> str:
        """Mask ``value`` in everything ciflow prints from now on; returns it unchanged."""
        MASKER.add(value)
        return value

    def check_cancelled(self) -> None:
        """Raise `ModuleCancelled` if the module was cancelled; use in long pure-Python loops."""
        self.cancellation.check()

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        capture: bool = False,
        quiet: bool = False,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run a command (a shell string, or a list of arguments without a shell).

        Its output is streamed line by line under the module's name (``quiet=True`` hides it).
        A non-zero exit raises `CommandFailed` with the exit code and the last lines, unless
        ``check=False``. ``capture=True`` also returns the whole output. Module timeouts and
        cancellation kill the command's whole process tree.
        """
        merged = self.env if env is None else {**self.env, **env}
        where = self.workdir if cwd is None else (self.workdir / cwd)

        def on_line(line: str) -> None:
            if not quiet:
                self._output(self.module, line)

        return run_command(
            cmd,
            cancellation=self.cancellation,
            on_line=on_line,
            cwd=where,
            env=merged,
            check=check,
            timeout=timeout,
            capture=capture,
            stdin=stdin,
        )


def _print_line(module: str, line: str) -> None:
    print(MASKER.mask(f"[{module}] {line}"), flush=True)
