"""What a module holds while it runs: the one description of ``not_in_parallel`` and limits.

`Constraints` turns a module's spec into resources with a number of places each; the local
engine counts them in memory, distributed workers hold them as leases in the store and the
planner treats them as exclusive keys (one place) or counted limits. ``alone`` (``not_in_parallel
=True``) is more: nothing else of the run may overlap the module. A new kind of constraint is a
new resource derived here (see docs/architecture.md, "Adding a constraint").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .module import ParallelLimit

__all__ = ["ALONE", "Constraints", "Resource"]

#: the resource every run-alone module holds (so two of them never overlap either)
ALONE = "@alone"


@dataclass(frozen=True, slots=True)
class Resource:
    """A shared thing: at most ``places`` modules hold it at once, across the whole run."""

    name: str
    places: int


@dataclass(frozen=True, slots=True)
class Constraints:
    """The resources a module holds while it runs, and whether it must run alone."""

    alone: bool
    resources: tuple[Resource, ...]

    @classmethod
    def of(cls, alone: bool, keys: Iterable[str], limit: ParallelLimit | None) -> Constraints:
        """From the spec: ``not_in_parallel`` keys (one place each), a limit, run-alone."""
        found = [Resource(f"key:{key}", 1) for key in sorted(keys)]
        if limit is not None:
            found.append(Resource(f"limit:{limit.name}", limit.count))
        if alone:
            found.append(Resource(ALONE, 1))
        return cls(alone, tuple(found))

    def __bool__(self) -> bool:
        return bool(self.resources)


NONE = Constraints(False, ())
