"""The orchestrator side of a distributed run: publish the plan, wait for workers, report.

The plan job (or ``ciflow dry-run``) uses these; workers only read what they write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from ..errors import UsageError
from ..model.outcome import Outcome
from ..planning.planner import DistributedExecutionPlan
from ..providers.github_jobs import job_of
from ..stores.base import Store, StoreError
from .keys import RunKeys
from .liveness import finished_workers, read_registrations
from .messages import Claim, Heartbeat, Registration, decode
from .results import ResultCache

__all__ = [
    "load_plan_file",
    "plan_order",
    "publish_plan",
    "render_status",
    "wait_for_registrations",
]


def load_plan_file(path: Path) -> DistributedExecutionPlan:
    """Read a plan written by ``ciflow plan --out``."""
    try:
        return DistributedExecutionPlan.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except ValidationError as exc:
        raise UsageError(f"{path} is not a ciflow plan: {exc.errors()[0]['msg']}") from None


def publish_plan(
    store: Store,
    keys: RunKeys,
    plan: DistributedExecutionPlan,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Store the run's plan; an identical plan already there is fine, a different one is not.

    Where a later CI attempt cannot see this one's records (`github://`), the plan is also
    kept where it can (`resume.carry_store`), so a re-run of failed jobs finds it.
    """
    data = plan.to_json().encode()
    if not store.create(keys.plan, data):
        existing = store.get(keys.plan)
        if existing is not None and existing != data:
            raise UsageError(
                f"run {keys.run_id} already has a different plan in the store; use a new --run-id"
            )
    from .resume import carry_store

    carry = carry_store(store)
    if carry is store:
        return
    try:
        carry.create(keys.plan, data, sole=True)
    except StoreError as exc:
        if warn is not None:
            warn(
                f"warning: the plan was not kept for re-runs ({exc}): re-running failed jobs "
                "will not find it; re-run all jobs instead"
            )


def read_stored_plan(store: Store, keys: RunKeys) -> DistributedExecutionPlan | None:
    """The run's stored plan, or None without one."""
    data = store.get(keys.plan)
    return None if data is None else parse_plan(data, keys.plan)


def parse_plan(data: bytes, key: str) -> DistributedExecutionPlan:
    """A stored plan; `StoreError` (one line) when it is not a valid one."""
    try:
        return DistributedExecutionPlan.model_validate_json(data)
    except ValidationError as exc:
        raise StoreError(f"plan {key} is not a valid plan: {exc.errors()[0]['msg']}") from None


def plan_order(store: Store, keys: RunKeys) -> list[str] | None:
    """The modules of the run's stored plan in dependency order, or None without a plan."""
    plan = read_stored_plan(store, keys)
    return None if plan is None else list(plan.inputs.modules)


def wait_for_registrations(
    store: Store, keys: RunKeys, count: int, minimum: int | None, timeout: float
) -> list[Registration]:
    """Wait until ``count`` workers registered (or ``minimum`` after ``timeout``), by slot."""
    deadline = time.monotonic() + timeout
    known: list[str] = []
    while True:
        regs = read_registrations(store, keys)
        by_slot: dict[int, Registration] = {}
        for reg in regs:
            by_slot.setdefault(reg.slot, reg)
        if len(by_slot) >= count:
            return [by_slot[s] for s in sorted(by_slot)][:count]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if minimum is not None and len(by_slot) >= minimum:
                return [by_slot[s] for s in sorted(by_slot)]
            raise StoreError(
                f"only {len(by_slot)} of {count} workers registered in run {keys.run_id} within "
                f"{timeout:g}s; start more workers, raise --register-timeout or pass "
                "--min-workers"
            )
        known = store.wait(keys.workers, known, min(remaining, 1.0))


def render_status(store: Store, keys: RunKeys) -> str:
    """Workers with liveness, modules by outcome, and who ran (or runs) what."""
    lines = [f"run {keys.run_id}"]
    regs = read_registrations(store, keys)
    done = finished_workers(store, keys)
    beats: dict[str, Heartbeat] = {}
    for key in store.list(keys.alive_prefix):
        worker = key[len(keys.alive_prefix) :].partition("/")[0]
        data = store.get(key)
        if data is not None:
            beat = decode(Heartbeat, data, key=key)
            if worker not in beats or beat.seq > beats[worker].seq:
                beats[worker] = beat
    running = {m: w for w, beat in beats.items() for m in beat.running}
    lines.append(f"workers: {len(regs)}")
    now = time.time()
    for reg in regs:
        if reg.worker in done:
            state = f"finished (exit {done[reg.worker].exit_code})"
        elif reg.worker in beats:
            state = f"last heartbeat {now - beats[reg.worker].at:.1f}s ago"
        elif job_of(reg.worker) is not None:
            state = f"watched through CI job {job_of(reg.worker)} (no heartbeats)"
        else:
            state = "no heartbeat yet"
        lines.append(f"  slot {reg.slot}: {reg.worker} ({reg.os}/{reg.arch}) {state}")
    cache = ResultCache(store, keys)
    cache.refresh()
    plan = read_stored_plan(store, keys)
    order = list(plan.inputs.modules) if plan else sorted(cache.present)
    planned = {m.name: s.slot for s in plan.slots for m in s.modules} if plan else {}
    by_outcome: dict[str, list[str]] = {}
    for name in order:
        header = cache.load(name) if name in cache.present else None
        by_outcome.setdefault(header.outcome if header else "pending", []).append(name)
    lines.append("modules: " + ", ".join(f"{len(v)} {k}" for k, v in by_outcome.items()))
    newest_claim: dict[str, str] = {}  # module -> its newest claim key (one list for all)
    for key in store.list(keys.claims):  # sorted: attempts are zero-padded, newest last
        newest_claim[key[len(keys.claims) :].partition("/")[0]] = key
    for name in order:
        header = cache.headers.get(name)
        if header is not None:
            who = f"{header.worker} (slot {header.slot}, attempt {header.attempt})"
            lines.append(f"  {name}: {Outcome(header.outcome).value} by {who}")
            continue
        claim_key = newest_claim.get(name)
        data = store.get(claim_key) if claim_key else None
        if claim_key and data is not None:  # handed to another worker, or taken over
            claim = decode(Claim, data, key=claim_key)
            lines.append(f"  {name}: claimed by {claim.worker} (attempt {claim.attempt})")
        elif name in running:
            lines.append(f"  {name}: running on {running[name]} (as of its last heartbeat)")
        elif name in planned:
            lines.append(f"  {name}: waiting (planned on slot {planned[name]})")
        else:
            lines.append(f"  {name}: waiting")
    return "\n".join(lines)
