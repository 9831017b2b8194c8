"""What a GitHub Actions runner step gives ciflow to reach the results service.

Configuration comes from the runner: ``ACTIONS_RESULTS_URL`` and ``ACTIONS_RUNTIME_TOKEN``.
GitHub gives them to JavaScript actions only, so ciflow's ``action.yml`` exports them for its
Python step. The run and job backend ids come from the token's ``scp`` claim
(``Actions.Results:<runBackendId>:<jobBackendId>``); the token is decoded, never verified.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..base import StoreUnavailable

__all__ = ["Runtime", "backend_ids", "runtime_from_env"]


@dataclass(frozen=True)
class Runtime:
    """What a runner step needs to call the results service."""

    origin: str
    token: str
    run_id: str
    job_id: str


def runtime_from_env(env: Mapping[str, str], scheme: str) -> Runtime:
    """Read ``ACTIONS_RESULTS_URL`` and ``ACTIONS_RUNTIME_TOKEN`` and the ids in the token."""
    url = env.get("ACTIONS_RESULTS_URL", "").strip()
    token = env.get("ACTIONS_RUNTIME_TOKEN", "").strip()
    missing = [
        n for n, v in (("ACTIONS_RESULTS_URL", url), ("ACTIONS_RUNTIME_TOKEN", token)) if not v
    ]
    if missing:
        raise StoreUnavailable(
            f"{scheme}:// store: {' and '.join(missing)} not set; GitHub gives these only to "
            "JavaScript actions, so run ciflow through its action.yml, which exports them"
        )
    match = re.match(r"(https?://[^/?#]+)", url)
    if not match:
        raise StoreUnavailable(f"{scheme}:// store: ACTIONS_RESULTS_URL is not an http(s) URL")
    run_id, job_id = backend_ids(token)
    return Runtime(match.group(1), token, run_id, job_id)


def backend_ids(token: str) -> tuple[str, str]:
    """The run and job backend ids in the ``scp`` claim of a runtime token (not verified)."""
    bad = "ACTIONS_RUNTIME_TOKEN is not a valid Actions runtime token"
    parts = token.split(".")
    if len(parts) != 3:
        raise StoreUnavailable(f"{bad} (not a JWT)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise StoreUnavailable(f"{bad} (unreadable payload)") from exc
    scp = claims.get("scp") if isinstance(claims, dict) else None
    if not isinstance(scp, str):
        raise StoreUnavailable(f"{bad} (no scp claim)")
    for scope in scp.split():
        fields = scope.split(":")
        if fields[0] != "Actions.Results":
            continue
        if len(fields) != 3 or not fields[1] or not fields[2]:
            raise StoreUnavailable(f"{bad} (malformed Actions.Results scope)")
        return fields[1], fields[2]
    raise StoreUnavailable(f"{bad} (no Actions.Results scope in scp)")
