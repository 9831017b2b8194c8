"""Runner pools: the CI runners a plan may use, from ``--pool`` or ``[[tool.ciflow.runners]]``."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import UsageError
from ..model.requirements import Capabilities, Requires

__all__ = ["RunnerPool", "load_pools", "parse_pool"]


class RunnerPool(BaseModel):
    """``count`` identical CI runners: their CI label and what they offer.

    ``tools`` None means "not declared": tool requirements are then checked by the worker when
    it starts, not by the planner.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    count: int = 1
    runs_on: str = "ubuntu-latest"
    os: str | None = "linux"
    arch: str | None = None
    tools: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()

    def missing(self, requires: Requires) -> list[str]:
        """What a module's requirements need that this pool does not offer."""
        return requires.missing(self.capabilities)

    @property
    def capabilities(self) -> Capabilities:
        """What the pool declares it offers (what it leaves out is not checked)."""
        return Capabilities.declared(self.os, self.arch, self.tools, self.tags)


def parse_pool(spec: str) -> RunnerPool:
    """Parse ``--pool "count=3 runs-on=ubuntu-latest os=linux tools=docker,make tags=gpu"``."""
    fields: dict[str, Any] = {}
    for part in spec.split():
        key, sep, value = part.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in RunnerPool.model_fields:
            known = "count, runs-on, os, arch, tools, tags"
            raise UsageError(f"bad --pool item {part!r}; use key=value with keys {known}")
        if key == "count":
            try:
                fields[key] = int(value)
            except ValueError:
                raise UsageError(f"--pool count must be a whole number, not {value!r}") from None
        elif key in ("tools", "tags"):
            fields[key] = tuple(v for v in value.split(",") if v)
        else:
            fields[key] = value or None
    return _pool(fields, "--pool")


def _pool(fields: dict[str, Any], where: str) -> RunnerPool:
    from pydantic import ValidationError

    data = {k.replace("-", "_"): v for k, v in fields.items()}
    try:
        pool = RunnerPool.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{where}: runner pool {loc}: {first['msg']}") from None
    if pool.count < 1:
        raise UsageError(f"{where}: runner pool count must be >= 1, not {pool.count}")
    return pool


def load_pools(start: Path) -> tuple[list[RunnerPool], Path | None]:
    """Runner pools from ``[[tool.ciflow.runners]]`` of the nearest pyproject.toml above start."""
    for folder in [start, *start.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise UsageError(f"cannot read {candidate}: {exc}") from None
            runners = data.get("tool", {}).get("ciflow", {}).get("runners")
            if runners is None:
                return [], candidate
            if not isinstance(runners, list) or not all(isinstance(r, dict) for r in runners):
                raise UsageError(f"{candidate}: [tool.ciflow] runners must be a list of tables")
            where = f"{candidate} [[tool.ciflow.runners]]"
            return [_pool(r, where) for r in runners], candidate
    return [], None
