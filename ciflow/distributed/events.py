"""What the worker's state machine hears and what it asks for (docs/architecture.md, "The worker").

Events carry what the runtime observed (a listing, a record read, a module's end, a signal,
the clock); instructions say what the runtime must do next (read, write, start, say). Both are
plain frozen data, so a test can feed events and compare instructions without a store or a
thread. Every event carries ``now``: the runtime's monotonic clock, the machine's only clock.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from ..model.constraints import Resource
from ..model.outcome import Outcome

__all__ = [
    "Acquire",
    "Acquired",
    "Ask",
    "Capable",
    "CancelRead",
    "ClaimRead",
    "Dead",
    "Ended",
    "Event",
    "Finish",
    "GiveUpSlot",
    "GoQuiet",
    "Grant",
    "HeldBy",
    "Instruction",
    "Listed",
    "ReadAlone",
    "ReadCancel",
    "ReadClaim",
    "ReadRegistration",
    "ReadResult",
    "Release",
    "Resolve",
    "ResultRead",
    "Say",
    "SlotRead",
    "Start",
    "Started",
    "Stop",
    "StopRunning",
    "Tick",
    "AloneRead",
]


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Started:
    """The plan was read: the machine begins (modules without dependencies become ready)."""

    now: float


@dataclass(frozen=True)
class Listed:
    """A listing: of the whole run (``whole``) or of its results only."""

    now: float
    keys: Collection[str]
    whole: bool


@dataclass(frozen=True)
class Dead:
    """Liveness after a whole listing: the registered workers now taken for dead."""

    now: float
    dead: frozenset[str]


@dataclass(frozen=True)
class Capable:
    """A registration was read: what ``worker`` cannot serve, and how many it runs at once."""

    now: float
    worker: str
    unable: frozenset[str]
    max_parallel: int = 1


@dataclass(frozen=True)
class ResultRead:
    """The outcome of a marked result (``None``: the result could not be read)."""

    now: float
    module: str
    outcome: Outcome | None


@dataclass(frozen=True)
class HeldBy:
    """Who holds a claim: its worker and how many holders died before (from the record)."""

    worker: str
    deaths: int = 0


@dataclass(frozen=True)
class ClaimRead:
    """A claim record was read (``holder`` None: missing, truncated or unreadable)."""

    now: float
    module: str
    attempt: int
    holder: HeldBy | None


@dataclass(frozen=True)
class Acquired:
    """The answer to `Acquire`: ``won`` (leases and claim held) or lost to ``holder``."""

    now: float
    module: str
    attempt: int
    won: bool
    holder: HeldBy | None = None
    #: the claim (not a lease) was lost: another worker created it first
    lost_claim: bool = False


@dataclass(frozen=True)
class AloneRead:
    """The run-alone lease as the store has it: who holds it for which module (or nobody)."""

    now: float
    module: str | None
    attempt: int = 0
    worker: str = ""


@dataclass(frozen=True)
class SlotRead:
    """The record of ``slot``: who serves it, or that it was given up (``worker`` None: unread)."""

    now: float
    slot: int
    worker: str | None
    given_up: bool = False


@dataclass(frozen=True)
class CancelRead:
    """The run's cancel record (fail-fast) was read."""

    now: float
    reason: str


@dataclass(frozen=True)
class Ended:
    """A module this worker ran or resolved ended: its outcome (None: handed back, no result).

    ``written`` is False when another attempt's result was first.
    """

    now: float
    module: str
    attempt: int
    outcome: Outcome | None
    written: bool = True


@dataclass(frozen=True)
class Stop:
    """A signal: drain (start nothing new); ``hard`` also stops what runs, handing it back."""

    now: float
    hard: bool = False


@dataclass(frozen=True)
class Tick:
    """Time passed with nothing observed (waits, delays and timeouts are checked)."""

    now: float


Event = (
    Started | Listed | Dead | Capable | ResultRead | ClaimRead | Acquired | AloneRead
    | SlotRead | CancelRead | Ended | Stop | Tick
)  # fmt: skip


# ---------------------------------------------------------------------------- instructions


@dataclass(frozen=True)
class ReadResult:
    """Download ``module``'s (marked) result and answer with `ResultRead`."""

    module: str


@dataclass(frozen=True)
class ReadClaim:
    """Read claim ``attempt`` of ``module``; answer with `ClaimRead`."""

    module: str
    attempt: int


@dataclass(frozen=True)
class ReadRegistration:
    """Read ``worker``'s registration; answer with `Capable`."""

    worker: str


@dataclass(frozen=True)
class ReadAlone:
    """Read the run-alone lease; answer with `AloneRead`."""


@dataclass(frozen=True)
class ReadCancel:
    """Read the cancel record; answer with `CancelRead` if there is one."""


@dataclass(frozen=True)
class Acquire:
    """Take ``resources`` as leases, then (``claim``) create claim ``attempt``; answer `Acquired`.

    ``takeover_from`` and ``deaths`` go into the claim; leases held by a worker of ``dead`` are
    freed first.
    """

    module: str
    attempt: int
    resources: tuple[Resource, ...]
    claim: bool
    takeover_from: str | None = None
    deaths: int = 0
    dead: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Release:
    """Drop the leases held for ``module``."""

    module: str


@dataclass(frozen=True)
class Start:
    """Run ``module`` as ``attempt`` in the pool; answer with `Ended` when it ends."""

    module: str
    attempt: int


@dataclass(frozen=True)
class Resolve:
    """Publish ``module``'s outcome without running it; answer with `Ended`."""

    module: str
    attempt: int
    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class Ask:
    """Write a steal request for ``module`` (its slot's worker may grant it)."""

    module: str


@dataclass(frozen=True)
class Grant:
    """Give attempt 1 of our ``module`` to ``worker`` (a claim); answer with `ClaimRead`."""

    module: str
    worker: str


@dataclass(frozen=True)
class GoQuiet:
    """Write that this worker runs nothing while ``module`` runs alone on ``holder``."""

    module: str
    attempt: int
    holder: str


@dataclass(frozen=True)
class GiveUpSlot:
    """Record that ``slot`` is served by nobody (unless its worker did first); answer `SlotRead`."""

    slot: int


@dataclass(frozen=True)
class StopRunning:
    """Cancel (``hard``: interrupt and hand back) every module running here."""

    reason: str
    hard: bool


@dataclass(frozen=True)
class Say:
    """A log line."""

    text: str


@dataclass(frozen=True)
class Finish:
    """Leave the run with exit code ``code``."""

    code: int
    summary: Mapping[str, int] = field(default_factory=dict)


Instruction = (
    ReadResult | ReadClaim | ReadRegistration | ReadAlone | ReadCancel | Acquire | Release
    | Start | Resolve | Ask | Grant | GoQuiet | GiveUpSlot | StopRunning | Say | Finish
)  # fmt: skip
