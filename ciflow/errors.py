"""The exit codes of every command, the exceptions ciflow raises, and the code each one means.

`ExitCode` is the one table of exit codes: ``run``, ``dry-run``, ``worker``, ``summary``,
``plan`` and ``validate`` all exit with its values and nothing else (README.md, "Exit codes").

Library code raises; only the CLI turns an exception into one line of output and an exit code.
Subclasses are grouped by how a caller recovers::

    CiflowError (exit 1)                 anything ciflow reports on purpose
    ├── RunNotFound (exit 4)             the store has no such run (no plan, no results)
    ├── UsageError (exit 2)              bad command line: fix the flags
    │   └── SelectionError               --only/--skip/--category matched nothing
    ├── PipelineError (exit 2)           the pipeline file is wrong: fix the file
    │   ├── PipelineLoadError            missing file, syntax error, import failure
    │   ├── CycleError                   dependencies form a cycle ("a -> b -> a")
    │   ├── UnknownModuleError           a dependency or name that no module has
    │   ├── DuplicateModuleError         two modules with one name
    │   ├── SpecError                    a bad argument to @ciflow.module
    │   ├── SignatureError               a parameter that names no dependency
    │   └── ResultTypeError              a result that does not match its annotation
    ├── RequirementError (exit 2)        a module's `requires` cannot be met here
    ├── CommandFailed (exit 1)           ctx.run: a command exited non-zero
    └── Interrupted (exit 130)           Ctrl-C or SIGTERM

`ModuleCancelled` is not an error but a signal inside a module's thread (like
`asyncio.CancelledError`): it derives from `BaseException` so `except Exception` in module code
does not swallow a cancellation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "CiflowError",
    "CommandFailed",
    "CycleError",
    "DuplicateModuleError",
    "ExitCode",
    "Interrupted",
    "ModuleCancelled",
    "PipelineError",
    "PipelineLoadError",
    "RequirementError",
    "ResultTypeError",
    "RunNotFound",
    "SelectionError",
    "SignatureError",
    "SpecError",
    "UnknownModuleError",
    "UsageError",
]


class ExitCode(enum.IntEnum):
    """What a command's exit status means; the same condition gives the same code everywhere.

    A run's code is the first that applies, in this order: interrupted, a definition error, a
    module that did not succeed, a module without an outcome, all good.
    """

    #: every selected module has a successful outcome (succeeded, cached, ignored_failure,
    #: skipped)
    OK = 0
    #: a module failed, timed out, was cancelled or lost a dependency; or an error of the
    #: store, the network or the machine
    FAILED = 1
    #: the command line or the pipeline file is wrong: bad flags, a definition error (cycle,
    #: unknown module, bad signature, a result that does not match its annotation), an unmet
    #: requirement
    USAGE = 2
    #: a selected module has no outcome: its result is missing from the store (workers died,
    #: the store lost or refused it)
    INCOMPLETE = 3
    #: the store has no such run: no plan and no result under that run id (or no store there)
    NO_RUN = 4
    #: stopped by Ctrl-C, SIGTERM or SIGHUP
    INTERRUPTED = 130


class CiflowError(Exception):
    """Root of every error ciflow raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(CiflowError):
    """The command line asks for something that cannot be done."""

    exit_code = ExitCode.USAGE


class RunNotFound(CiflowError):
    """The store has no run under the id asked for: neither a plan nor a result."""

    exit_code = ExitCode.NO_RUN


class SelectionError(UsageError):
    """A module selector (--only, --skip, --category) matched no module."""


class PipelineError(CiflowError):
    """The pipeline definition is wrong; the message names the file and module where known."""

    exit_code = ExitCode.USAGE


class PipelineLoadError(PipelineError):
    """The pipeline file is missing or could not be imported."""


class CycleError(PipelineError):
    """The dependencies form a cycle; `cycle` lists it with the first name repeated at the end."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        super().__init__(
            f"dependency cycle: {' -> '.join(self.cycle)}; remove one of these dependencies"
        )


class UnknownModuleError(PipelineError):
    """A name refers to no module of the pipeline."""


class DuplicateModuleError(PipelineError):
    """Two modules were registered under one name."""


class SpecError(PipelineError):
    """An argument of `@ciflow.module(...)` is invalid."""


class SignatureError(PipelineError):
    """A module function's parameters do not match its dependencies."""


class ResultTypeError(PipelineError):
    """A module returned a value that does not match its return annotation."""


class RequirementError(CiflowError):
    """A module requires an OS, architecture, tool or tag this machine does not have."""

    exit_code = ExitCode.USAGE


class CommandFailed(CiflowError):
    """A command run with `ctx.run` exited non-zero; `tail` holds its last output lines."""

    def __init__(
        self, command: str, returncode: int, tail: Sequence[str] = (), reason: str | None = None
    ) -> None:
        self.command = command
        self.returncode = returncode
        self.tail = list(tail)
        why = reason or f"failed with exit code {returncode}"
        message = f"command {why}: {command}"
        if self.tail:
            message += "\n" + "\n".join(self.tail)
        super().__init__(message)


class Interrupted(CiflowError):
    """The run was interrupted by Ctrl-C or SIGTERM."""

    exit_code = ExitCode.INTERRUPTED


class ModuleCancelled(BaseException):  # noqa: N818 - a signal, named like asyncio's
    """Raised inside a module when its run was cancelled (fail-fast, timeout or interrupt)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
