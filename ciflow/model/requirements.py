"""What a module requires of a machine, and what a machine offers: the one matcher.

`Requires` is declared on a module; `Capabilities` is what a machine offers: detected here, read
from a worker's registration, or declared for a runner pool (where anything left out is not
checked). `Requires.missing(caps)` says in words what is lacking, and `unmet` applies it to
modules: ``ciflow run``, ``validate``, the planner and the workers all use these two.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import RequirementError

__all__ = [
    "Capabilities",
    "Requires",
    "check_requirements",
    "normalize_arch",
    "normalize_os",
    "unmet",
]

_OS_ALIASES = {
    "linux": "linux",
    "ubuntu": "linux",
    "darwin": "macos",
    "macos": "macos",
    "mac": "macos",
    "osx": "macos",
    "win32": "windows",
    "windows": "windows",
    "win": "windows",
}
_ARCH_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "x64": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8": "arm64",
}


def normalize_os(name: str) -> str:
    """Map an OS spelling (``darwin``, ``win32``, ``Linux``) to ``linux``/``macos``/``windows``."""
    key = name.strip().lower()
    return _OS_ALIASES.get(key, key)


def normalize_arch(name: str) -> str:
    """Map an architecture spelling (``amd64``, ``aarch64``) to ``x86_64``/``arm64``."""
    key = name.strip().lower()
    return _ARCH_ALIASES.get(key, key)


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclass(frozen=True, init=False)
class Requires:
    """What a module needs of the machine that runs it.

    ``os`` and ``arch`` accept one name or several alternatives; every tool in ``tools`` must be on
    PATH and every tag in ``tags`` must be offered by the worker (``--tag``).
    """

    os: tuple[str, ...]
    arch: tuple[str, ...]
    tools: tuple[str, ...]
    tags: tuple[str, ...]

    def __init__(
        self,
        os: str | Iterable[str] | None = None,
        arch: str | Iterable[str] | None = None,
        tools: Iterable[str] = (),
        tags: Iterable[str] = (),
    ) -> None:
        object.__setattr__(self, "os", tuple(normalize_os(v) for v in _names(os)))
        object.__setattr__(self, "arch", tuple(normalize_arch(v) for v in _names(arch)))
        object.__setattr__(self, "tools", _names(tools))
        object.__setattr__(self, "tags", _names(tags))

    def missing(self, caps: Capabilities) -> list[str]:
        """Describe each unmet requirement, e.g. ``"os linux (this machine: windows)"``.

        What ``caps`` leaves undeclared (an os, arch or tool list of None) is not checked.
        """
        lacking: list[str] = []
        where = caps.label
        if self.os and caps.os is not None and caps.os not in self.os:
            lacking.append(f"os {' or '.join(self.os)} ({where}: {caps.os})")
        if self.arch and caps.arch is not None and caps.arch not in self.arch:
            lacking.append(f"arch {' or '.join(self.arch)} ({where}: {caps.arch})")
        if caps.tools is not None:
            on_path = " on PATH" if caps.detected else ""
            lacking += [f"tool {tool!r}{on_path}" for tool in self.tools if tool not in caps.tools]
        lacking += [f"tag {tag!r}" for tag in self.tags if tag not in caps.tags]
        return lacking

    def __bool__(self) -> bool:
        return bool(self.os or self.arch or self.tools or self.tags)


@dataclass(frozen=True)
class Capabilities:
    """What one machine (worker) or runner pool offers: OS, architecture, tools, tags.

    ``None`` for ``os``, ``arch`` or ``tools`` means "not declared" (a pool that does not say):
    requirements on it are then not checked. ``label`` names the offer in messages, and
    ``detected`` says the tools were looked up on PATH.
    """

    os: str | None
    arch: str | None
    tools: frozenset[str] | None = field(default_factory=frozenset)
    tags: frozenset[str] = field(default_factory=frozenset)
    max_parallel: int = 1
    label: str = "this machine"
    detected: bool = True

    @classmethod
    def detect(
        cls, tools: Iterable[str] = (), tags: Iterable[str] = (), max_parallel: int = 1
    ) -> Capabilities:
        """Detect this machine; only the named tools are looked up on PATH."""
        found = frozenset(tool for tool in tools if shutil.which(tool) is not None)
        return cls(
            os=normalize_os(sys.platform),
            arch=normalize_arch(platform.machine() or os.uname().machine),
            tools=found,
            tags=frozenset(tags),
            max_parallel=max_parallel,
        )

    @classmethod
    def declared(
        cls,
        os: str | None,
        arch: str | None,
        tools: Iterable[str] | None,
        tags: Iterable[str],
        label: str = "pool",
    ) -> Capabilities:
        """What a runner pool says it offers (names normalized; None: not declared)."""
        return cls(
            os=normalize_os(os) if os else None,
            arch=normalize_arch(arch) if arch else None,
            tools=None if tools is None else frozenset(tools),
            tags=frozenset(tags),
            label=label,
            detected=False,
        )


class _HasRequires(Protocol):
    @property
    def requires(self) -> Requires: ...


def unmet(
    modules: Mapping[str, _HasRequires], names: Iterable[str], caps: Capabilities
) -> list[str]:
    """``"'name' needs <what is missing>"`` for each of ``names`` that ``caps`` cannot serve."""
    problems = []
    for name in names:
        missing = modules[name].requires.missing(caps)
        if missing:
            problems.append(f"{name!r} needs {', '.join(missing)}")
    return problems


def check_requirements(
    modules: Mapping[str, _HasRequires], names: Iterable[str], caps: Capabilities
) -> None:
    """Raise `RequirementError` naming every module this machine cannot serve, and why."""
    problems = unmet(modules, names, caps)
    if problems:
        raise RequirementError(
            f"this machine cannot run {'; '.join(problems)}; install what is missing, "
            "pass --tag, or leave the module out with --skip"
        )
