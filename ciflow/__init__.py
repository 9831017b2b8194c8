"""ciflow: run a pipeline of CI modules on one machine or spread over many CI runners.

Define modules in a ``ciflow.py`` with ``@ciflow.module`` and run them with ``ciflow run``. Names
are imported on first use, so that ``ciflow --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .capabilities import Capabilities, Requires
    from .conditions import Condition, env_set, not_on_branch, not_on_ci, on_branch, on_ci
    from .context import Context
    from .engine import Engine, RunResult
    from .errors import (
        CiflowError,
        CommandFailed,
        CycleError,
        ModuleCancelled,
        PipelineError,
        RequirementError,
        UsageError,
    )
    from .masking import secret
    from .modules import Module, ParallelLimit, module, optional
    from .outcome import Outcome
    from .pipeline import Pipeline, load_pipeline
    from .process import CommandResult

__all__ = [
    "Capabilities",
    "CiflowError",
    "CommandFailed",
    "CommandResult",
    "Condition",
    "Context",
    "CycleError",
    "Engine",
    "Module",
    "ModuleCancelled",
    "Outcome",
    "ParallelLimit",
    "Pipeline",
    "PipelineError",
    "RequirementError",
    "Requires",
    "RunResult",
    "UsageError",
    "__version__",
    "env_set",
    "load_pipeline",
    "module",
    "not_on_branch",
    "not_on_ci",
    "on_branch",
    "on_ci",
    "optional",
    "secret",
]

_WHERE = {
    "Capabilities": "capabilities",
    "Requires": "capabilities",
    "Condition": "conditions",
    "env_set": "conditions",
    "not_on_branch": "conditions",
    "not_on_ci": "conditions",
    "on_branch": "conditions",
    "on_ci": "conditions",
    "Context": "context",
    "Engine": "engine",
    "RunResult": "engine",
    "CiflowError": "errors",
    "CommandFailed": "errors",
    "CycleError": "errors",
    "ModuleCancelled": "errors",
    "PipelineError": "errors",
    "RequirementError": "errors",
    "UsageError": "errors",
    "secret": "masking",
    "Module": "modules",
    "ParallelLimit": "modules",
    "module": "modules",
    "optional": "modules",
    "Outcome": "outcome",
    "Pipeline": "pipeline",
    "load_pipeline": "pipeline",
    "CommandResult": "process",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'ciflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{where}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
