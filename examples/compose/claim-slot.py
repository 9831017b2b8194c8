"""Claim a free slot of the run for this container, then run the command with CIFLOW_SLOT set.

    python claim-slot.py ciflow worker [ARGS...]

Docker Compose starts N replicas of a service (`--scale worker=N`) without telling a container
its number. Each worker claims the lowest free slot 0..CIFLOW_WORKERS-1 of run CIFLOW_RUN_ID in
the run's own store (CIFLOW_STORE), with the store's atomic create-if-absent: of two containers
claiming one slot exactly one gets it. A restarted container (same host name) gets its slot back.
"""

from __future__ import annotations

import os
import socket
import sys

from ciflow.stores import Store, open_store


def claim(store: Store, run_id: str, total: int, me: bytes) -> int | None:
    """The lowest slot this container holds or could take, or None when all are taken."""
    for slot in range(total):
        key = f"compose-slots/{run_id}/{slot}"
        if store.create(key, me) or store.get(key) == me:
            return slot
    return None


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: claim-slot.py COMMAND [ARG...]")
    try:
        store_url = os.environ["CIFLOW_STORE"]
        run_id = os.environ["CIFLOW_RUN_ID"]
        total = int(os.environ["CIFLOW_WORKERS"])
    except (KeyError, ValueError) as exc:
        sys.exit(f"claim-slot.py: set CIFLOW_STORE, CIFLOW_RUN_ID and CIFLOW_WORKERS ({exc})")
    if not run_id:
        sys.exit("claim-slot.py: CIFLOW_RUN_ID is empty: export CIFLOW_RUN_ID=<a new id per run>")
    # Docker sets HOSTNAME to the container's host name, which a restart keeps
    me = (os.environ.get("HOSTNAME") or socket.gethostname()).encode()
    store = open_store(store_url)
    try:
        slot = claim(store, run_id, total, me)
    finally:
        store.close()
    if slot is None:
        sys.exit(f"claim-slot.py: all {total} slots of run {run_id} are taken (CIFLOW_WORKERS)")
    print(f"claim-slot.py: {me.decode()} serves slot {slot}", flush=True)
    os.environ["CIFLOW_SLOT"] = str(slot)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
