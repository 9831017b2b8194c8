"""Twirp JSON calls to the GitHub results service, over the shared retrying `Transport`.

``POST {origin}/twirp/{service}/{Method}`` with the runtime token as bearer and a snake_case
JSON body; answers are read in snake_case or camelCase (`get_field`).

Retries (besides the transport's: HTTP 408, 429, 5xx, 403 with ``Retry-After``, connection
errors, timeouts): bodies that are not a JSON object, and the Twirp codes in `RETRY_CODES`.
Other errors raise `TwirpError`, a `StoreError` naming the RPC, HTTP status and Twirp code and
message; 401 and 403 raise `TwirpAuthError`, a `StoreUnavailable` (never retried).

Two refusals are final whatever their status or code (a 429 or ``resource_exhausted`` too): the
storage quota (the service's message says "insufficient usage", which ``@actions/artifact``
reports as "Artifact storage quota has been hit") and a job's artifact limit (the message names
a limit of artifacts). They are never retried: `TwirpError.quota`, `TwirpError.limit`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from ..base import StoreError, StoreUnavailable
from ..transport import Retry, Transport
from .runtime import Runtime

__all__ = ["RETRY_CODES", "Twirp", "TwirpAuthError", "TwirpError", "get_field", "one_line"]

#: (connect, read) timeouts of Twirp calls, seconds
RPC_TIMEOUT = (10.0, 60.0)
#: Twirp codes that are worth another attempt whatever the HTTP status says
RETRY_CODES = frozenset({"unavailable", "resource_exhausted", "aborted", "deadline_exceeded"})
#: what the service's message says when the account's artifact storage quota is used up (the
#: text ``@actions/artifact`` looks for: `UsageError.isUsageErrorMessage`)
QUOTA_MARK = "insufficient usage"


class TwirpError(StoreError):
    """A Twirp call failed for good; ``ambiguous`` if an earlier attempt may have taken effect."""

    def __init__(
        self, label: str, rpc: str, status: int, code: str, msg: str, ambiguous: bool
    ) -> None:
        what = f"{code}: {msg}" if msg else code or "no Twirp error body"
        super().__init__(f"{label}: {rpc} failed with HTTP {status} ({what})")
        self.label, self.rpc, self.status, self.code, self.msg = label, rpc, status, code, msg
        self.ambiguous = ambiguous

    @property
    def exists(self) -> bool:
        """The error says the name or key exists already."""
        return (
            self.code == "already_exists"
            or (self.status == 409 and self.code in ("", "unknown"))
            or "already exists" in self.msg.lower()
        )

    @property
    def not_found(self) -> bool:
        return self.code == "not_found" or (self.status == 404 and self.code in ("", "bad_route"))

    @property
    def quota(self) -> bool:
        """The account's artifact storage quota is used up."""
        return _quota(self.msg)

    @property
    def limit(self) -> bool:
        """The job may create no more artifacts (GitHub allows 500 per job)."""
        return _limit(self.code, self.msg)


def _quota(msg: str) -> bool:
    text = msg.lower()
    return QUOTA_MARK in text or "storage quota" in text


def _limit(code: str, msg: str) -> bool:
    text = msg.lower()
    return code in ("failed_precondition", "resource_exhausted", "out_of_range") and (
        "limit" in text and "artifact" in text
    )


class TwirpAuthError(TwirpError, StoreUnavailable):
    """HTTP 401 or 403: the token may not do this (wrong scope, read-only, expired)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, shortened."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def get_field(obj: Mapping[str, Any], snake: str) -> Any:
    """A response field by its snake_case name or its camelCase form."""
    if snake in obj:
        return obj[snake]
    head, *rest = snake.split("_")
    return obj.get(head + "".join(w.title() for w in rest))


@dataclass(frozen=True)
class _Refused:
    """A definite Twirp error answer (raised as `TwirpError` once the call is over)."""

    status: int
    code: str
    msg: str


def _json_object(resp: requests.Response) -> dict[str, Any] | None:
    try:
        payload = resp.json()
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _error_fields(payload: Mapping[str, Any]) -> tuple[str, str]:
    """The Twirp ``code`` and ``msg`` of an error body."""
    code = str(payload.get("code") or "")
    return code, one_line(str(payload.get("msg") or payload.get("message") or ""))


def _detail(resp: requests.Response) -> str:
    """`` (code: msg)`` of a retried answer with a Twirp error body, else ''."""
    payload = _json_object(resp)
    code, msg = _error_fields(payload) if payload is not None else ("", "")
    return f" ({code}: {msg})" if code else ""


def _read(resp: requests.Response) -> dict[str, Any] | _Refused:
    """The answer of a 2xx, a `_Refused` for a definite error; `Retry` for the rest."""
    status = resp.status_code
    payload = _json_object(resp)
    if payload is None:
        raise Retry(f"HTTP {status} with a body that is not a JSON object")
    if 200 <= status < 300:
        return payload
    code, msg = _error_fields(payload)
    if code in RETRY_CODES:
        raise Retry(f"HTTP {status} ({code}: {msg})")
    return _Refused(status, code, msg)


class Twirp:
    """One Twirp service of the results service, called with the runtime's token."""

    def __init__(self, transport: Transport, runtime: Runtime, service: str) -> None:
        self.transport, self.runtime, self.service = transport, runtime, service

    def rpc(self, method: str, body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Call ``method``; (response, ambiguous). `TwirpError` for a definite failure."""
        label = self.transport.label

        def final(resp: requests.Response) -> None:
            """A quota or limit refusal is final, whatever its status: never retried."""
            if resp.status_code < 400:
                return
            payload = _json_object(resp)
            code, msg = _error_fields(payload) if payload is not None else ("", "")
            if _quota(msg) or _limit(code, msg):
                raise TwirpError(label, method, resp.status_code, code, msg, False)

        sent = self.transport.send(
            "POST",
            f"{self.runtime.origin}/twirp/{self.service}/{method}",
            _read,
            counter=method,
            timeout=RPC_TIMEOUT,
            detail=_detail,
            fail_fast=final,
            data=json.dumps(body).encode(),  # bytes: headers and body go in one segment
            headers={
                "Authorization": f"Bearer {self.runtime.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        answer = sent.value
        if isinstance(answer, _Refused):
            error = TwirpAuthError if answer.status in (401, 403) else TwirpError
            raise error(label, method, answer.status, answer.code, answer.msg, sent.ambiguous)
        return answer, sent.ambiguous
