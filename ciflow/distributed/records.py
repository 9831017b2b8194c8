"""The worker's small records, written and read: claims, leases, requests, quiet, cancel.

Each function does one store exchange for one instruction of the state machine and returns
what the machine needs to hear back. A record that cannot be decoded is treated as absent
(the caller says so); only an unreachable store raises (`StoreError`).
"""

from __future__ import annotations

import time
from typing import TypeVar

from ..model.constraints import ALONE, Resource
from ..model.requirements import Capabilities
from ..stores.base import Store, StoreError
from .blob import BlobError
from .events import HeldBy
from .keys import RunKeys, lease_resource
from .messages import (
    CancelRecord,
    Claim,
    Lease,
    Quiet,
    Registration,
    SlotRecord,
    StealRequest,
    decode,
    encode,
)

__all__ = [
    "capabilities_of",
    "offered",
    "drop_leases",
    "hold_slot",
    "read_alone_lease",
    "read_cancel",
    "read_claim",
    "take_leases",
    "write_claim",
    "write_quiet",
    "write_request",
]


M = TypeVar("M", Claim, Lease, CancelRecord, Registration, SlotRecord)


def _decode_or_none(model: type[M], data: bytes | None, key: str) -> M | None:
    if data is None:
        return None
    try:
        return decode(model, data, key=key)
    except (BlobError, StoreError, ValueError):
        return None


def read_claim(store: Store, keys: RunKeys, module: str, attempt: int) -> HeldBy | None:
    """Who holds claim ``attempt`` of ``module`` (None: missing or unreadable)."""
    key = keys.claim(module, attempt)
    claim = _decode_or_none(Claim, store.get(key), key)
    return None if claim is None else HeldBy(claim.worker, claim.deaths)


def hold_slot(
    store: Store, keys: RunKeys, slot: int, worker: str, given_up: bool
) -> SlotRecord | None:
    """Create the record of ``slot``; the one that was there first (None: it cannot be read).

    A record of our own found after a retried create is ours: the first try was applied.
    """
    key = keys.slot(slot)
    record = SlotRecord(slot=slot, worker=worker, given_up=given_up)
    if store.create(key, encode(record)):
        return record
    return _decode_or_none(SlotRecord, store.get(key), key)


def write_claim(
    store: Store,
    keys: RunKeys,
    claim: Claim,
) -> tuple[bool, HeldBy | None]:
    """Create the claim; on a lost race, who won it (None if that record cannot be read)."""
    key = keys.claim(claim.module, claim.attempt)
    if store.create(key, encode(claim)):
        return True, HeldBy(claim.worker, claim.deaths)
    return False, read_claim(store, keys, claim.module, claim.attempt)


def take_leases(
    store: Store,
    keys: RunKeys,
    worker: str,
    module: str,
    attempt: int,
    resources: tuple[Resource, ...],
    dead: frozenset[str],
) -> list[str] | None:
    """Take one place of every resource; None (and nothing held) when one is full."""
    taken: list[str] = []
    for res in resources:
        name = lease_resource(res.name)
        record = encode(
            Lease(resource=name, module=module, attempt=attempt, worker=worker, at=time.time())
        )
        key = _lease(store, keys, name, res.places, record, dead)
        if key is None:
            drop_leases(store, taken)
            return None
        taken.append(key)
    return taken


def _lease(
    store: Store, keys: RunKeys, name: str, places: int, record: bytes, dead: frozenset[str]
) -> str | None:
    for place in range(places):
        key = keys.lease(name, place)
        if store.create(key, record):
            return key
        holder = _decode_or_none(Lease, store.get(key), key)
        if holder is not None and holder.worker in dead:  # its worker died holding it
            store.delete(key)
            if store.create(key, record):
                return key
    return None


def drop_leases(store: Store, taken: list[str]) -> list[str]:
    """Release leases; returns warnings for those that could not be deleted."""
    problems = []
    for key in taken:
        try:
            store.delete(key)
        except StoreError as exc:
            problems.append(f"warning: cannot release lease {key}: {exc}")
    return problems


def write_request(store: Store, keys: RunKeys, module: str, worker: str, slot: int) -> None:
    request = StealRequest(module=module, worker=worker, slot=slot, at=time.time())
    store.create(keys.request(module, worker), encode(request), sole=True)


def write_quiet(store: Store, keys: RunKeys, module: str, attempt: int, worker: str) -> None:
    record = Quiet(worker=worker, module=module, attempt=attempt, at=time.time())
    store.create(keys.quiet(module, attempt, worker), encode(record), sole=True)


def read_alone_lease(store: Store, keys: RunKeys) -> Lease | None:
    key = keys.lease(lease_resource(ALONE), 0)
    return _decode_or_none(Lease, store.get(key), key)


def read_cancel(store: Store, keys: RunKeys) -> CancelRecord | None:
    return _decode_or_none(CancelRecord, store.get(keys.cancel), keys.cancel)


def capabilities_of(store: Store, keys: RunKeys, worker: str) -> Registration | None:
    """``worker``'s registration (None: missing or unreadable)."""
    key = keys.worker(worker)
    return _decode_or_none(Registration, store.get(key), key)


def offered(reg: Registration) -> Capabilities:
    """What a registered worker's machine offers, for the requirements matcher."""
    return Capabilities.declared(reg.os, reg.arch, reg.tools, reg.tags, label=reg.worker)
