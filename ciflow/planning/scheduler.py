"""Static list scheduling of a task DAG onto CI runner slots (the planner's pure core).

Data in, data out: build a `Problem` (tasks with durations, predecessors and transfer costs,
eligible slots, exclusive keys, counted limits, affinity groups), call `plan()` for the
searched schedule, or `heft()` / `round_robin()` for the baselines. `simulate()` replays a plan
with real durations, with and without work stealing. Everything is deterministic: the same
problem always gives the same schedule (search is bounded by an evaluation count, never by time).

This module is the core's public face; the parts live beside it (see docs/architecture.md):
problem.py (the data), taskgraph.py (index form), rules.py (priority rules), bounds.py,
timelines.py and list_scheduling.py (one pass), search.py and branch_and_bound.py (the search),
simulate.py (checking and replay). No pipeline, no I/O.
"""

from __future__ import annotations

from .bounds import lower_bound
from .list_scheduling import heft, round_robin
from .problem import Placement, Problem, Schedule, Task
from .search import plan
from .simulate import SimulationResult, simulate, violations

__all__ = [
    "Placement",
    "Problem",
    "Schedule",
    "SimulationResult",
    "Task",
    "heft",
    "lower_bound",
    "plan",
    "round_robin",
    "simulate",
    "violations",
]
