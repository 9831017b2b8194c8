"""The bearer tokens of ``ciflow serve``: the token file, and who may do what.

The token file (``--token-file``) has one token a line::

    # role  token                              [namespace]
    rw      3f9c0c2e0b6d4a0e9c1f5b7a2d8e6c41
    ro      0d2b7e9a41c64f38a5e0b1c9d7f3e2a6
    rw      9a8b7c6d5e4f30211234567890abcdef   team-a

``rw`` tokens may do everything; ``ro`` tokens may read (get, exists, list, wait) but not
create or delete. A third field limits a token to one namespace (``*``, the default, is every
namespace). Blank lines and lines starting with ``#`` are ignored. Tokens are at least
`MIN_TOKEN` characters of ``[A-Za-z0-9._~+/=-]``; ``python -c "import secrets;
print(secrets.token_hex(16))"`` makes one. The server refuses to start on a file without a token,
with a line it cannot read, or that other users may read (``chmod 600`` it).

A request's ``Authorization: Bearer <token>`` is compared with every token of the file in
constant time (`hmac.compare_digest` of their SHA-256 digests, all of them compared whatever
matched), so neither the answer time nor its length tells how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

__all__ = ["MIN_TOKEN", "Grant", "Refusal", "Tokens"]

MIN_TOKEN = 16
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]+")
_NAMESPACE = re.compile(r"\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ROLES = ("rw", "ro")


@dataclass(frozen=True)
class Grant:
    """One token of the file: its digest, its role and the namespace it is limited to."""

    digest: bytes
    role: str
    namespace: str = "*"


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: its HTTP status (401 or 403) and a one-line message."""

    status: int
    message: str


class Tokens:
    """The tokens of a token file, and the check of a request's ``Authorization`` header."""

    def __init__(self, grants: list[Grant]) -> None:
        if not grants:
            raise UsageError("the token file has no token: add a line `rw <token>`")
        self.grants = grants

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read and check a token file (`UsageError` naming the line and the fix)."""
        try:
            info = os.stat(path)
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the token file {path}: {exc}") from exc
        if os.name == "posix" and info.st_mode & (stat.S_IROTH | stat.S_IWOTH):
            raise UsageError(
                f"the token file {path} may be read or written by other users: chmod 600 {path}"
            )
        grants = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            grants.append(_parse_line(path, number, line))
        if not grants:
            raise UsageError(f"the token file {path} has no token: add a line `rw <token>`")
        return cls(grants)

    def check(self, header: str | None, namespace: str, write: bool) -> Refusal | None:
        """None if ``header`` grants the request, else why not."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return Refusal(401, "no token: send `Authorization: Bearer <token>`")
        digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).digest()
        found: Grant | None = None
        for grant in self.grants:  # every one compared: the time does not depend on a match
            if hmac.compare_digest(digest, grant.digest) and found is None:
                found = grant
        if found is None:
            return Refusal(401, "the token is not accepted")
        if found.namespace not in ("*", namespace):
            return Refusal(403, f"the token is not valid for namespace {namespace!r}")
        if write and found.role != "rw":
            return Refusal(403, "the token is read-only: it may not create or delete keys")
        return None


def _parse_line(path: Path, number: int, line: str) -> Grant:
    fields = line.split()
    where = f"token file {path}, line {number}"
    if len(fields) not in (2, 3) or fields[0] not in ROLES:
        raise UsageError(f"{where}: expected `rw <token> [namespace]` or `ro <token> [namespace]`")
    role, token = fields[0], fields[1]
    if len(token) < MIN_TOKEN or not _TOKEN.fullmatch(token):
        raise UsageError(
            f"{where}: a token is at least {MIN_TOKEN} characters of [A-Za-z0-9._~+/=-]"
        )
    namespace = fields[2] if len(fields) == 3 else "*"
    if not _NAMESPACE.fullmatch(namespace):
        raise UsageError(f"{where}: {namespace!r} is not a namespace (or `*`)")
    return Grant(hashlib.sha256(token.encode()).digest(), role, namespace)
