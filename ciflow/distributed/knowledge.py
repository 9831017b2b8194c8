"""What one worker knows about its run: module phases, claims, workers (docs/architecture.md).

The data of the worker's state machine (`state.WorkerState`) and the few queries and moves
that its parts (`stealing`, `alone`) share. Each module is in one `Phase`; `TRANSITIONS` lists
the moves allowed and `Knowledge.move` checks every one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from ..model.module import Module
from ..model.outcome import Outcome
from .events import HeldBy
from .keys import RunKeys

__all__ = [
    "HELD", "MAX_DEATHS", "TRANSITIONS", "AloneState", "ClaimInfo", "Config", "Hold",
    "Knowledge", "Phase", "PlanView", "slot_of",
]  # fmt: skip

#: executor deaths after which a module is failed instead of taken over again
MAX_DEATHS = 2


class Phase(Enum):
    WAITING = "waiting"
    READY = "ready"
    ASKED = "asked"
    ACQUIRING = "acquiring"
    QUIETING = "quieting"
    RUNNING = "running"
    DONE = "done"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.WAITING: frozenset({Phase.READY, Phase.DONE}),
    Phase.READY: frozenset({Phase.ASKED, Phase.ACQUIRING, Phase.DONE}),
    Phase.ASKED: frozenset({Phase.READY, Phase.ACQUIRING, Phase.DONE}),
    Phase.ACQUIRING: frozenset({Phase.READY, Phase.RUNNING, Phase.QUIETING, Phase.DONE}),
    Phase.QUIETING: frozenset({Phase.READY, Phase.RUNNING, Phase.DONE}),
    Phase.RUNNING: frozenset({Phase.READY, Phase.DONE}),
    Phase.DONE: frozenset(),
}

#: phases in which this worker holds the module (leases, claim or a pool thread)
HELD = frozenset({Phase.ACQUIRING, Phase.QUIETING, Phase.RUNNING})


def slot_of(worker: str) -> int | None:
    """The slot in a worker id made by `liveness.new_worker_id` (``s<slot>-...``), or None."""
    head = worker.partition("-")[0]
    return int(head[1:]) if head[:1] == "s" and head[1:].isdigit() else None


@dataclass(frozen=True)
class Config:
    """How this worker behaves (from `WorkerOptions` and the store's profile)."""

    worker: str
    slot: int
    jobs: int = 1
    steal: bool = True
    keep_going: bool = False
    heartbeat_timeout: float = 10.0
    steal_delay: float = 0.1
    ask_expiry: float = 2.0
    max_deaths: int = MAX_DEATHS
    #: a ready module that no live worker can serve fails after this long
    unservable_timeout: float = 60.0
    #: how often a line says what this worker waits for
    log_every: float = 30.0
    #: after a lease was found taken, how long before trying that module again
    lease_retry: float = 0.05
    #: this slot was given up for lost before this worker came: claim own modules too
    contested: bool = False


@dataclass
class PlanView:
    """The plan as the machine needs it: order, owners, dependencies, what runs here."""

    modules: Mapping[str, Module]
    owner: dict[str, int]
    order: list[str]  # this slot's modules first (plan order), then the others by start
    slot_order: dict[int, list[str]]
    unable: frozenset[str] = frozenset()  # what this worker's machine cannot serve
    #: planned start and duration of each module (seconds from the run's start), if known
    start: Mapping[str, float] = field(default_factory=dict)
    cost: Mapping[str, float] = field(default_factory=dict)
    #: outcomes an earlier CI attempt of the run settled: done from the start (re-runs)
    carried: Mapping[str, Outcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rank = {name: i for i, name in enumerate(self.order)}
        self.slot_rank = {n: i for names in self.slot_order.values() for i, n in enumerate(names)}
        self.required = {
            n: tuple(d.name for d in self.modules[n].depends_on if not d.optional)
            for n in self.order
        }
        self.needs = {
            n: tuple(d.name for d in self.modules[n].depends_on if d.name in self.rank)
            for n in self.order
        }


@dataclass
class ClaimInfo:
    """The newest claim of a module as this worker knows it."""

    attempt: int
    seen_at: float
    holder: HeldBy | None = None
    read: bool = False  # its record was read (``holder`` is what it says)
    warned: bool = False
    reading: bool = False  # a read was asked for and is not answered yet
    #: since when every read found the record missing or unreadable (None: it was read)
    unreadable_since: float | None = None
    #: our whole listings when its holder first looked gone (see `WorkerState._holder_gone`)
    doubted_at: int | None = None


@dataclass
class Hold:
    """Why and as what this worker may take a module now."""

    attempt: int
    claim: bool
    takeover_from: str | None = None
    deaths: int = 0
    resolve: tuple[Outcome, str] | None = None


@dataclass
class AloneState:
    """The run-alone protocol as this worker sees it (see `alone`)."""

    #: the run-alone lease held by another worker: (module, attempt, worker)
    seen: tuple[str, int, str] | None = None
    reading: bool = False
    #: quiet records listed: (module, attempt, worker)
    quiet: set[tuple[str, int, str]] = field(default_factory=set)
    acked: set[tuple[str, int]] = field(default_factory=set)
    #: our run-alone module waiting for quiet: (module, attempt, listings needed)
    waiting: tuple[str, int, int] | None = None


@dataclass
class Knowledge:
    """Everything one worker knows about its run (the state machine's data)."""

    plan: PlanView
    config: Config
    keys: RunKeys
    phase: dict[str, Phase] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)
    present: set[str] = field(default_factory=set)
    missing: dict[str, int] = field(default_factory=dict)  # needed deps without an outcome
    dependents: dict[str, list[str]] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)  # phase READY or ASKED
    claims: dict[str, ClaimInfo] = field(default_factory=dict)
    requests: dict[str, list[str]] = field(default_factory=dict)
    asked: dict[str, float] = field(default_factory=dict)
    ready_since: dict[str, float] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    registered: dict[str, float] = field(default_factory=dict)  # worker -> first seen
    finished: set[str] = field(default_factory=set)
    dead: frozenset[str] = frozenset()
    unable: dict[str, frozenset[str]] = field(default_factory=dict)
    parallel: dict[str, int] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    listings: int = 0
    started_at: float | None = None
    cancel: str | None = None
    draining: bool = False
    hard: bool = False
    over: bool = False
    ran_bad: list[str] = field(default_factory=list)
    alone: AloneState = field(default_factory=AloneState)
    #: slot -> (what its record says: "pending", "unread", "given up" or a worker, since when)
    slot_records: dict[int, tuple[str, float]] = field(default_factory=dict)
    last_log: float = 0.0
    unservable_since: dict[str, float] = field(default_factory=dict)
    lease_retry: dict[str, float] = field(default_factory=dict)
    #: modules whose result we could not write (another attempt's was first): since when
    superseded: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.plan.order:
            self.phase[name] = Phase.WAITING
            self.missing[name] = len(self.plan.needs[name])
            for dep in self.plan.needs[name]:
                self.dependents.setdefault(dep, []).append(name)

    def move(self, name: str, to: Phase) -> None:
        """Move ``name`` to phase ``to``; a move `TRANSITIONS` does not allow is a bug."""
        here = self.phase[name]
        if to not in TRANSITIONS[here]:
            raise AssertionError(f"module {name}: no transition {here.value} -> {to.value}")
        self.phase[name] = to
        if to in (Phase.READY, Phase.ASKED):
            self.ready.add(name)
        else:
            self.ready.discard(name)

    def let_go(self, name: str, now: float) -> None:
        """A module this worker stops holding: done if its result came meanwhile, else ready."""
        self.holds.pop(name, None)
        if name in self.outcomes:
            self.move(name, Phase.DONE)
        else:
            self.move(name, Phase.READY)
            self.ready_since.setdefault(name, now)

    def resolving(self, name: str) -> bool:
        hold = self.holds.get(name)
        return hold is not None and hold.resolve is not None

    def executing(self) -> list[str]:
        """Modules held here to run (acquiring, quieting or running), not to resolve."""
        return [n for n in self.holds if not self.resolving(n)]

    def jumps_ahead(self, name: str, now: float) -> bool:
        """Would starting our ``name`` now, before an earlier module of our slot that is not
        ready yet, run into that module's planned start? (Then wait for it, while it is not
        overdue: the plan put it first for a reason.)"""
        plan = self.plan
        if not plan.start or self.started_at is None:
            return False
        clock = now - self.started_at
        cost = plan.cost.get(name, 0.0)
        late = cost / 4  # how overdue an earlier module may be and still be waited for
        mine = plan.slot_order.get(self.config.slot, ())
        for earlier in mine[: plan.slot_rank[name]]:
            start = plan.start[earlier]
            if self.phase[earlier] is Phase.WAITING and clock - late < start < clock + cost:
                return True
        return False

    def running(self) -> list[str]:
        """Modules in a pool thread here (or being resolved)."""
        return [n for n in self.holds if self.phase[n] is Phase.RUNNING]

    def slot_worker(self, slot: int) -> str | None:
        """The worker serving ``slot``: a live one, else a dead one, else None."""
        serving = sorted(w for w in self.registered if slot_of(w) == slot)
        live = [w for w in serving if w not in self.dead]
        found = live or serving
        return found[0] if found else None

    def live_workers(self) -> list[str]:
        return sorted(w for w in self.registered if w not in self.dead and w not in self.finished)
