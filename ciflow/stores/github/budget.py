"""What one job may create on ``github://``: GitHub's 500 artifacts per job, counted here.

GitHub counts the artifacts a job *creates* (the upload-artifact docs: 500 per job; deleting one
does not give it back). One ciflow process is one job, so the count is kept per process and
per job (the runtime token's ids): every CreateArtifact that may have made an artifact counts,
a definite refusal does not. `Budget.spend` refuses the one past the limit before it is sent.
"""

from __future__ import annotations

import threading

from ..base import StoreError

__all__ = ["ARTIFACT_BUDGET", "Budget", "budget_error", "quota_error"]

#: artifacts one job may create in a workflow run (deleted ones count too)
ARTIFACT_BUDGET = 500

_USED: dict[tuple[str, ...], int] = {}
_LOCK = threading.Lock()


def budget_error(key: str, budget: int, used: int, said: str = "") -> StoreError:
    """The one-line error of a create past the budget, or refused by the service for it
    (``said``: the service's message)."""
    why = f"GitHub refused it ({said})" if said else f"this job has created {used}"
    return StoreError(
        f"github store: cannot create {key!r}: GitHub allows {budget} artifacts per job and "
        f"{why}; plan more workers (ciflow plan --workers N), so that each job creates fewer"
    )


def quota_error(key: str, msg: str) -> StoreError:
    """The one-line error of a create refused for the account's artifact storage quota."""
    return StoreError(
        f"github store: cannot create {key!r}: the artifact storage quota of the repository's "
        f"account is used up (GitHub: {msg or 'insufficient usage'}); delete old artifacts or "
        "lower --retention-days, then run again (GitHub recalculates usage every 6-12 hours)"
    )


class Budget:
    """The creations of one job, shared by every store of this process for that job."""

    def __init__(self, *ident: str, limit: int = ARTIFACT_BUDGET) -> None:
        self.ident, self.limit = ident, limit

    @property
    def used(self) -> int:
        with _LOCK:
            return _USED.get(self.ident, 0)

    def left(self) -> int:
        return max(0, self.limit - self.used)

    def spend(self, key: str) -> None:
        """Count one CreateArtifact about to be sent; `StoreError` if the budget is spent."""
        with _LOCK:
            used = _USED.get(self.ident, 0)
            if used >= self.limit:
                raise budget_error(key, self.limit, used)
            _USED[self.ident] = used + 1

    def refund(self) -> None:
        """The CreateArtifact just counted made nothing (a definite refusal)."""
        with _LOCK:
            _USED[self.ident] = max(0, _USED.get(self.ident, 0) - 1)
