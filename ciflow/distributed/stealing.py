"""Stealing: an idle worker asks for a ready module its slot's busy worker has not started.

The asker writes a steal request; the slot's worker, when the module still waits there, grants
attempt 1 to the first live asker with a claim. Only the slot's worker writes attempt 1 claims
of its modules, so there is no race to settle. A request not answered within
``Config.ask_expiry`` is given up (and never repeated for that module).
"""

from __future__ import annotations

from .events import Ask, Grant, HeldBy, Instruction
from .knowledge import ClaimInfo, Knowledge, Phase

__all__ = ["ask", "expire", "grant", "should_ask", "slot_busy"]


def should_ask(st: Knowledge, name: str, now: float) -> bool:
    """Is it worth asking for someone else's ready module ``name`` now?"""
    cfg = st.config
    if not cfg.steal or st.draining or name in st.asked or name in st.claims:
        return False
    slot = st.plan.owner[name]
    if slot == cfg.slot or name in st.plan.unable or st.slot_worker(slot) is None:
        return False
    pending = sum(1 for m in st.asked if st.phase[m] is Phase.ASKED)
    if len(st.executing()) + pending >= cfg.jobs:
        return False
    if now - st.ready_since.get(name, now) < cfg.steal_delay:
        return False
    return slot_busy(st, name)


def slot_busy(st: Knowledge, name: str) -> bool:
    """Does ``name``'s slot have a ready, unclaimed module before it (so it is on that one)?"""
    slot, rank = st.plan.owner[name], st.plan.slot_rank[name]
    return any(
        st.plan.owner[other] == slot and st.plan.slot_rank[other] < rank and other not in st.claims
        for other in st.ready
    )


def ask(st: Knowledge, name: str, now: float, out: list[Instruction]) -> None:
    st.asked[name] = now
    st.move(name, Phase.ASKED)
    out.append(Ask(name))


def expire(st: Knowledge, name: str, now: float) -> None:
    """Give up a request nobody answered in time (the module goes back to ready)."""
    if now - st.asked.get(name, now) > st.config.ask_expiry and name not in st.claims:
        st.move(name, Phase.READY)


def grant(st: Knowledge, name: str, now: float, out: list[Instruction]) -> None:
    """Give attempt 1 of our waiting module ``name`` to the first live worker that asked."""
    if st.draining or name in st.claims or st.config.contested:
        return  # contested: attempt 1 is not ours to give (claims decide, see `slots`)
    me = st.config.worker
    askers = [
        w for w in st.requests.get(name, ())
        if w != me and w not in st.dead and w not in st.finished
    ]  # fmt: skip
    if not askers:
        return
    # taken as granted at once (no second grant); the runtime answers with the record
    st.claims[name] = ClaimInfo(1, now, HeldBy(askers[0]), read=True)
    out.append(Grant(name, askers[0]))
