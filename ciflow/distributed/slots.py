"""Giving up a slot nobody serves, safely (part of the worker's state machine).

Attempt 1 of a module belongs to its planned slot without a record. A worker that finds a slot
unserved after the heartbeat timeout may take its modules over, but its worker may only be late:
both would run attempt 1. So the slot's record (``slots/<slot>``, create-if-absent) decides: the
slot's worker creates it as it starts; a worker about to take over creates it "given up". Whoever
is first wins. A slot's worker that finds its slot given up claims its own modules explicitly,
like any other worker (`Config.contested`), so claims arbitrate; a taker that finds the slot
served waits for that worker like for any other. See docs/architecture.md, "The worker".
"""

from __future__ import annotations

from .events import GiveUpSlot, Instruction, SlotRead
from .knowledge import Knowledge

__all__ = ["given_up", "read"]

PENDING = "pending"
GIVEN_UP = "given up"


def given_up(st: Knowledge, slot: int, now: float, out: list[Instruction]) -> bool:
    """Whether ``slot`` is given up (its modules may be taken over); asks for it if not known."""
    state, since = st.slot_records.get(slot, ("", 0.0))
    if state == GIVEN_UP:
        return True
    if state == "" or (state == "unread" and now - since > st.config.heartbeat_timeout / 4):
        st.slot_records[slot] = (PENDING, now)
        out.append(GiveUpSlot(slot))
    elif state not in (PENDING, "unread"):  # its worker came first: watch it like any other
        st.registered.setdefault(state, now)
    return False


def read(st: Knowledge, event: SlotRead) -> None:
    """Take in the answer to `GiveUpSlot`."""
    if event.worker is None:  # unreadable: ask again after a while (never guess: both would run)
        st.slot_records[event.slot] = ("unread", event.now)
    elif event.given_up:
        st.slot_records[event.slot] = (GIVEN_UP, event.now)
    else:
        st.slot_records[event.slot] = (event.worker, event.now)
