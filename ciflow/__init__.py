"""ciflow: run a pipeline of CI modules on one machine or spread over many CI runners.

Define modules in a ``ciflow.py`` with ``@ciflow.module`` and run them with ``ciflow run``. Names
are imported on first use, so that ``ciflow --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .errors import (
        CiflowError,
        CommandFailed,
        CycleError,
        ModuleCancelled,
        PipelineError,
        RequirementError,
        UsageError,
    )
    from .execution.context import Context
    from .execution.engine import Engine
    from .execution.masking import secret
    from .execution.process import CommandResult
    from .model.conditions import Condition, env_set, not_on_branch, not_on_ci, on_branch, on_ci
    from .model.module import Module, ParallelLimit, module, optional
    from .model.outcome import Outcome, RunResult
    from .model.pipeline import Pipeline, load_pipeline
    from .model.requirements import Capabilities, Requires

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
    "Capabilities": "model.requirements",
    "Requires": "model.requirements",
    "Condition": "model.conditions",
    "env_set": "model.conditions",
    "not_on_branch": "model.conditions",
    "not_on_ci": "model.conditions",
    "on_branch": "model.conditions",
    "on_ci": "model.conditions",
    "Context": "execution.context",
    "Engine": "execution.engine",
    "RunResult": "model.outcome",
    "CiflowError": "errors",
    "CommandFailed": "errors",
    "CycleError": "errors",
    "ModuleCancelled": "errors",
    "PipelineError": "errors",
    "RequirementError": "errors",
    "UsageError": "errors",
    "secret": "execution.masking",
    "Module": "model.module",
    "ParallelLimit": "model.module",
    "module": "model.module",
    "optional": "model.module",
    "Outcome": "model.outcome",
    "Pipeline": "model.pipeline",
    "load_pipeline": "model.pipeline",
    "CommandResult": "execution.process",
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
