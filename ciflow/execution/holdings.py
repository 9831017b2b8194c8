"""The resources modules hold inside one process (the local engine's side of constraints).

The same `Constraints` the planner and the workers read (model/constraints.py), counted in
memory: a module starts only when every resource it names has a free place, and a run-alone
module only when nothing else runs (and nothing else starts while one waits).
"""

from __future__ import annotations

from ..model.constraints import Constraints

__all__ = ["Holdings"]


class Holdings:
    """Places taken per resource, and the run-alone state; guarded by the caller's lock."""

    __slots__ = ("_use", "alone_running", "alone_waiting")

    def __init__(self) -> None:
        self._use: dict[str, int] = {}
        self.alone_running = False
        self.alone_waiting = 0  # run-alone modules queued: nothing else starts meanwhile

    def can_start(self, constraints: Constraints, running: int) -> bool:
        """May a module with ``constraints`` start while ``running`` modules run?"""
        if self.alone_running:
            return False
        if constraints.alone:
            return running == 0
        if self.alone_waiting:
            return False
        use = self._use
        return all(use.get(r.name, 0) < r.places for r in constraints.resources)

    def take(self, constraints: Constraints) -> None:
        """The module starts: hold its places."""
        if constraints.alone:
            self.alone_waiting -= 1
            self.alone_running = True
        use = self._use
        for r in constraints.resources:
            use[r.name] = use.get(r.name, 0) + 1

    def release(self, constraints: Constraints) -> None:
        """The module ended: free its places."""
        if constraints.alone:
            self.alone_running = False
        use = self._use
        for r in constraints.resources:
            use[r.name] -= 1
