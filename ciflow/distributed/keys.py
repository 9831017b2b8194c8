"""Where a run keeps its records in the store, built and parsed in this one place.

One namespace per run, ``runs/<run-id>/``::

    plan                               the plan (attempt 1 of every module belongs to its slot)
    carry/<attempt>                    what CI attempts up to this one finished (re-runs)
    carried/<module>/<attempt>-<n>     outputs carried to later attempts (github://)
    attempt-<n>/...                    the records below, of CI attempt n resuming the run
    cancel                             fail-fast: the run is cancelled
    workers/<worker>                   a registration
    slots/<slot>                       who serves a slot, or that it was given up for lost
    alive/<worker>/<seq>               a heartbeat
    done/<worker>                      a deregistration (exit code, store operations)
    claims/<module>/<attempt>          who runs attempt k of a module (hand-over, takeover)
    requests/<module>/<worker>         an idle worker asks for a module (stealing)
    results/<module>                   the result record (first one written wins)
    results/<module>@unsuccessful      some attempt of the module ended without success
    outputs/<module>/<attempt>         the module's declared outputs, a tar.zst archive
    leases/<resource>/<place>          a held not_in_parallel key or parallel_limit place
    quiet/<module>/<attempt>/<worker>  a worker runs nothing while the module runs alone

Module names never contain ``@`` or ``/`` and have at most 64 characters (``NAME_MAX`` in
model/module.py), so every key parses back unambiguously with `RunKeys.parse` and fits every
store. See docs/architecture.md, "Store layout".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Key", "RunKeys", "lease_resource"]

_RUN_ID = re.compile(r"[A-Za-z0-9._=@+-]+")
#: suffix of the marker key written before a result whose outcome is not a success
MARKER = "@unsuccessful"


def lease_resource(name: str) -> str:
    """A resource name (``key:db``, ``limit:browsers``, ``@alone``) as one safe key part."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40]
    return f"{safe}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, slots=True)
class Key:
    """A parsed key of a run: its kind and the names and numbers in it."""

    kind: str
    module: str = ""
    worker: str = ""
    number: int = 0  # attempt, heartbeat sequence or lease place
    resource: str = ""


class RunKeys:
    """The keys of one run; with ``attempt``, of a later CI attempt that resumes it.

    A resumed attempt keeps its own records (claims, results, cancel, ...) under
    ``runs/<run-id>/attempt-<n>/``, so nothing of an earlier attempt is stale in it; the plan
    and the carried records stay at the run's top (docs/architecture.md, "Re-runs").
    """

    def __init__(self, run_id: str, attempt: int | None = None) -> None:
        if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
            raise UsageError(f"invalid run id {run_id!r}: use letters, digits and . _ = @ + -")
        self.run_id = run_id
        self.attempt = attempt
        self.run_root = f"runs/{run_id}/"
        self.root = self.run_root if attempt is None else f"{self.run_root}attempt-{attempt}/"
        self.plan = self.run_root + "plan"
        self.carry_prefix = self.run_root + "carry/"
        self.carried_outputs = self.run_root + "carried/"
        self.cancel = self.root + "cancel"
        self.workers = self.root + "workers/"
        self.slots = self.root + "slots/"
        self.alive_prefix = self.root + "alive/"
        self.claims = self.root + "claims/"
        self.requests = self.root + "requests/"
        self.results = self.root + "results/"
        self.outputs_prefix = self.root + "outputs/"
        self.leases_prefix = self.root + "leases/"
        self.quiet_prefix = self.root + "quiet/"
        self.done = self.root + "done/"

    def worker(self, worker: str) -> str:
        return self.workers + worker

    def slot(self, slot: int) -> str:
        """Created once per slot: by its worker, or by a worker taking over a slot nobody serves."""
        return f"{self.slots}{slot:04d}"

    def alive(self, worker: str, seq: int) -> str:
        return f"{self.alive_prefix}{worker}/{seq:010d}"

    def claim(self, module: str, attempt: int) -> str:
        return f"{self.claims}{module}/{attempt:04d}"

    def request(self, module: str, worker: str) -> str:
        return f"{self.requests}{module}/{worker}"

    def result(self, module: str) -> str:
        return self.results + module

    def marker(self, module: str) -> str:
        """Written before a result whose outcome does not count as success."""
        return self.results + module + MARKER

    def outputs(self, module: str, attempt: int) -> str:
        return f"{self.outputs_prefix}{module}/{attempt:04d}"

    def leases(self, resource: str) -> str:
        return f"{self.leases_prefix}{resource}/"

    def lease(self, resource: str, place: int) -> str:
        return f"{self.leases(resource)}{place:04d}"

    def quiet(self, module: str, attempt: int, worker: str) -> str:
        """``worker`` runs nothing while ``module`` (not_in_parallel=True) runs alone."""
        return f"{self.quiet_prefix}{module}/{attempt:04d}/{worker}"

    def done_of(self, worker: str) -> str:
        return self.done + worker

    def carry(self, attempt: int) -> str:
        """What attempts up to ``attempt`` finished, written by that attempt's summary."""
        return f"{self.carry_prefix}{attempt:04d}"

    def carried(self, module: str, attempt: int, index: int) -> str:
        """A copy of a carried module's outputs archive, where the store is per attempt."""
        return f"{self.carried_outputs}{module}/{attempt:04d}-{index:03d}"

    def resumed(self, attempt: int) -> RunKeys:
        """The keys of CI attempt ``attempt`` resuming this run."""
        return RunKeys(self.run_id, attempt)

    def parse(self, key: str) -> Key | None:
        """What ``key`` of this run is, or None for a key that is not one of its records."""
        if not key.startswith(self.root):
            return None
        head, _, rest = key[len(self.root) :].partition("/")
        if not rest:
            return Key(head) if head in ("plan", "cancel") else None
        parts = rest.split("/")
        parse = _PARSERS.get(head)
        return None if parse is None else parse(parts)


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


_Parser = Callable[[list[str]], "Key | None"]


def _one(kind: str) -> _Parser:
    def parse(parts: list[str]) -> Key | None:
        return Key(kind, worker=parts[0]) if len(parts) == 1 else None

    return parse


def _alive(parts: list[str]) -> Key | None:
    seq = _number(parts[-1]) if len(parts) == 2 else None
    return None if seq is None else Key("alive", worker=parts[0], number=seq)


def _claim(parts: list[str]) -> Key | None:
    attempt = _number(parts[-1]) if len(parts) == 2 else None
    return None if attempt is None else Key("claim", module=parts[0], number=attempt)


def _request(parts: list[str]) -> Key | None:
    return Key("request", module=parts[0], worker=parts[1]) if len(parts) == 2 else None


def _result(parts: list[str]) -> Key | None:
    if len(parts) != 1:
        return None
    name = parts[0]
    if name.endswith(MARKER):
        return Key("marker", module=name[: -len(MARKER)])
    return None if "@" in name else Key("result", module=name)


def _outputs(parts: list[str]) -> Key | None:
    attempt = _number(parts[-1]) if len(parts) == 2 else None
    return None if attempt is None else Key("outputs", module=parts[0], number=attempt)


def _lease(parts: list[str]) -> Key | None:
    place = _number(parts[-1]) if len(parts) == 2 else None
    return None if place is None else Key("lease", resource=parts[0], number=place)


def _quiet(parts: list[str]) -> Key | None:
    attempt = _number(parts[1]) if len(parts) == 3 else None
    if attempt is None:
        return None
    return Key("quiet", module=parts[0], worker=parts[2], number=attempt)


def _slot(parts: list[str]) -> Key | None:
    slot = _number(parts[0]) if len(parts) == 1 else None
    return None if slot is None else Key("slot", number=slot)


_PARSERS: dict[str, _Parser] = {
    "workers": _one("worker"),
    "slots": _slot,
    "done": _one("done"),
    "alive": _alive,
    "claims": _claim,
    "requests": _request,
    "results": _result,
    "outputs": _outputs,
    "leases": _lease,
    "quiet": _quiet,
}
