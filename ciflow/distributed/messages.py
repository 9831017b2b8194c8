"""The records workers and the planner exchange through the store (the seed's messages).

Each is a pydantic model with a ``schema_version``; `decode` refuses a version newer than this
ciflow knows with a clear error instead of misreading it.

| seed message               | record here      | store key (under ``runs/<run-id>/``) |
|----------------------------|------------------|--------------------------------------|
| WorkerRegistrationMessage  | `Registration`   | ``workers/<worker>``                 |
| HeartbeatMessage           | `Heartbeat`      | ``alive/<worker>/<seq>``             |
| ModuleExecutionRequest     | plan entry       | ``plan`` (attempt 1 of each module)  |
|                            | `Claim`          | ``claims/<module>/<attempt>``        |
|                            | `StealRequest`   | ``requests/<module>/<worker>``       |
| ModuleResultResponse       | result blob      | ``results/<module>`` (see blob.py)   |
|                            | `Marker`         | ``results/<module>@unsuccessful``    |
| CancellationMessage        | `CancelRecord`   | ``cancel``                           |
|                            | `Lease`          | ``leases/<resource>/<place>``        |
|                            | `Quiet`          | ``quiet/<module>/<attempt>/<worker>``|
|                            | `Done`           | ``done/<worker>``                    |

The keys are built and parsed in keys.py only.
"""

from __future__ import annotations

import json
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..stores.base import StoreError

__all__ = [
    "MESSAGE_SCHEMA_VERSION",
    "CancelRecord",
    "Claim",
    "Done",
    "Heartbeat",
    "Lease",
    "Marker",
    "Quiet",
    "Registration",
    "SlotRecord",
    "StealRequest",
    "decode",
    "encode",
]

MESSAGE_SCHEMA_VERSION = 1


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = MESSAGE_SCHEMA_VERSION


class Registration(_Message):
    """A worker announces itself and what it offers."""

    kind: Literal["registration"] = "registration"
    worker: str
    slot: int
    host: str
    pid: int
    os: str
    arch: str
    tools: list[str]
    tags: list[str]
    max_parallel: int
    runs_on: str | None = None
    registered_at: float


class Heartbeat(_Message):
    """A worker is alive; observers compare sequence numbers, not clocks."""

    kind: Literal["heartbeat"] = "heartbeat"
    worker: str
    seq: int
    at: float
    running: list[str] = []


class Claim(_Message):
    """Worker ``worker`` runs (or resolves) ``module``, attempt ``attempt``.

    Attempt 1 of a module belongs to its planned slot without a record; a claim is written only
    when that changes: the slot's worker grants the module to a stealer (``granted_by``), or a
    worker takes over from a dead one (``takeover_from``) or from a slot nobody came for.
    """

    kind: Literal["claim"] = "claim"
    module: str
    attempt: int
    worker: str
    slot: int
    at: float
    takeover_from: str | None = None
    granted_by: str | None = None
    #: how many workers died while they held this module (attempts lost to executor deaths)
    deaths: int = 0


class SlotRecord(_Message):
    """Who serves slot ``slot``: its worker, or (``given_up``) a worker that found it unserved.

    Created once (create-if-absent): a slot's worker that finds the slot given up claims its
    modules explicitly, like any other worker, instead of running attempt 1 without a record.
    """

    kind: Literal["slot"] = "slot"
    slot: int
    worker: str
    given_up: bool = False


class StealRequest(_Message):
    """Idle worker ``worker`` offers to run ``module`` of another slot (which may grant it)."""

    kind: Literal["steal-request"] = "steal-request"
    module: str
    worker: str
    slot: int
    at: float


class Lease(_Message):
    """A held `not_in_parallel` key or `parallel_limit` place."""

    kind: Literal["lease"] = "lease"
    resource: str
    module: str
    attempt: int
    worker: str
    at: float


class Quiet(_Message):
    """Worker ``worker`` runs nothing while ``module`` (not_in_parallel=True) runs alone."""

    kind: Literal["quiet"] = "quiet"
    worker: str
    module: str
    attempt: int
    at: float


class Marker(_Message):
    """Some attempt of ``module`` ended without success (written before its result)."""

    kind: Literal["marker"] = "marker"
    module: str
    attempt: int
    outcome: str


class CancelRecord(_Message):
    """The run is cancelled (fail-fast): start nothing new but always_run modules."""

    kind: Literal["cancel"] = "cancel"
    reason: str
    worker: str
    at: float


class Done(_Message):
    """A worker finished and left the run (deregistration)."""

    kind: Literal["done"] = "done"
    worker: str
    exit_code: int
    at: float
    store_ops: dict[str, int] = {}  # this worker's store operations by kind
    #: modules it ran whose result broke their annotation (a definition error: exit 2)
    definition_errors: list[str] = []


M = TypeVar("M", bound=_Message)


def encode(message: _Message) -> bytes:
    """The message as compact JSON bytes."""
    return message.model_dump_json().encode()


def decode(model: type[M], data: bytes, *, key: str) -> M:
    """Parse a message; an unknown future schema version or a broken record is a `StoreError`."""
    try:
        raw = json.loads(data)
    except ValueError:
        raise StoreError(f"store record {key} is not JSON; delete it or start a new run") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and version > MESSAGE_SCHEMA_VERSION:
        raise StoreError(
            f"store record {key} has schema version {version}, newer than this ciflow "
            f"({MESSAGE_SCHEMA_VERSION}): upgrade ciflow on every runner of the run"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise StoreError(
            f"store record {key} is not a valid {model.__name__}: "
            f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        ) from None
