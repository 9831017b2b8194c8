"""Store URLs and keys as the GitHub services name them: namespaces and artifact names.

URL forms: ``github://`` / ``github-cache://`` or with a namespace ``NS`` of
``[a-z0-9][a-z0-9._-]{0,31}`` (``github://NS``) for two stores in one run or repository.

Key encoding (`artifact_name`, `key_from_name`): ``/`` becomes ``~`` and an uppercase letter
``X`` becomes ``^x``; keys never hold ``~`` or ``^``, so the mapping is reversible, and names are
lowercase, so they stay distinct even where names compare case-insensitively. Names may not
exceed `NAME_MAX` (256) characters: ``github://`` leaves 249 for the encoded key.
"""

from __future__ import annotations

import re

from ...errors import UsageError
from ..base import check_key

__all__ = ["NAME_MAX", "artifact_name", "key_from_name", "name_prefix", "parse_namespace"]

#: GitHub's limit on artifact names ("must be between 1 and 256 characters")
NAME_MAX = 256

_NS = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_KEY_CHAR = re.compile(r"[a-z0-9._=@+-]")


def parse_namespace(url: str, scheme: str) -> str:
    """The namespace of ``scheme://[NS]`` ('' if none); `UsageError` for anything else."""
    head, sep, rest = url.partition("://")
    if head != scheme or not sep:
        raise UsageError(f"not a {scheme}:// URL: {url!r}")
    ns = rest.rstrip("/")
    if ns and not _NS.fullmatch(ns):
        raise UsageError(
            f"invalid store URL {url!r}: use {scheme}:// or {scheme}://NAMESPACE with "
            "[a-z0-9][a-z0-9._-] (at most 32 characters)"
        )
    return ns


def name_prefix(namespace: str = "") -> str:
    """The artifact name prefix of a store namespace."""
    return f"ciflow-{namespace}~" if namespace else "ciflow~"


def artifact_name(key: str, prefix: str = "ciflow~") -> str:
    """The artifact name of ``key``: ``/`` -> ``~``, ``X`` -> ``^x``; `UsageError` if too long."""
    check_key(key)
    name = prefix + "".join(
        "~" if c == "/" else f"^{c.lower()}" if "A" <= c <= "Z" else c for c in key
    )
    if len(name) > NAME_MAX:
        raise UsageError(
            f"store key too long for the github store: {key[:60]!r}… gives a {len(name)}-character "
            f"artifact name; GitHub allows {NAME_MAX} (uppercase letters count twice)"
        )
    return name


def key_from_name(name: str, prefix: str = "ciflow~") -> str | None:
    """The key of an artifact name made by `artifact_name`, or None for any other name."""
    if not name.startswith(prefix):
        return None
    out: list[str] = []
    chars = iter(name[len(prefix) :])
    for c in chars:
        if c == "~":
            out.append("/")
        elif c == "^":
            nxt = next(chars, "")
            if not ("a" <= nxt <= "z"):
                return None
            out.append(nxt.upper())
        elif _KEY_CHAR.fullmatch(c):
            out.append(c)
        else:
            return None
    key = "".join(out)
    try:
        check_key(key)
    except UsageError:
        return None
    return key
