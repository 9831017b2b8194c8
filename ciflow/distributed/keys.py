"""Where a run keeps its records in the store: one namespace per run, ``runs/<run-id>/``."""

from __future__ import annotations

import re

from ..errors import UsageError

__all__ = ["RunKeys"]

_RUN_ID = re.compile(r"[A-Za-z0-9._=@+-]+")


class RunKeys:
    """The keys of one run. Module names are valid key parts already (see modules.py)."""

    def __init__(self, run_id: str) -> None:
        if not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
            raise UsageError(f"invalid run id {run_id!r}: use letters, digits and . _ = @ + -")
        self.run_id = run_id
        self.root = f"runs/{run_id}/"

    @property
    def plan(self) -> str:
        return self.root + "plan"

    @property
    def cancel(self) -> str:
        return self.root + "cancel"

    @property
    def workers(self) -> str:
        return self.root + "workers/"

    def worker(self, worker: str) -> str:
        return self.workers + worker

    @property
    def alive_prefix(self) -> str:
        return self.root + "alive/"

    def alive(self, worker: str, seq: int) -> str:
        return f"{self.alive_prefix}{worker}/{seq:010d}"

    @property
    def claims(self) -> str:
        return self.root + "claims/"

    def claim(self, module: str, attempt: int) -> str:
        return f"{self.claims}{module}/{attempt:04d}"

    @property
    def requests(self) -> str:
        return self.root + "requests/"

    def request(self, module: str, worker: str) -> str:
        return f"{self.requests}{module}/{worker}"

    @property
    def results(self) -> str:
        return self.root + "results/"

    def result(self, module: str) -> str:
        return self.results + module

    def outputs(self, module: str, attempt: int) -> str:
        return f"{self.root}outputs/{module}/{attempt:04d}"

    def leases(self, resource: str) -> str:
        return f"{self.root}leases/{resource}/"

    def lease(self, resource: str, place: int) -> str:
        return f"{self.leases(resource)}{place:04d}"

    @property
    def quiet_prefix(self) -> str:
        return self.root + "quiet/"

    def quiet(self, module: str, attempt: int, worker: str) -> str:
        """``worker`` runs nothing while ``module`` (not_in_parallel=True) runs alone."""
        return f"{self.quiet_prefix}{module}/{attempt:04d}/{worker}"

    @property
    def done(self) -> str:
        return self.root + "done/"

    def done_of(self, worker: str) -> str:
        return self.done + worker
