"""Store URLs and keys as the GitHub services name them: namespaces and artifact names.

URL forms: ``github://`` / ``github-cache://`` or with a namespace ``NS`` of
``[a-z0-9][a-z0-9._-]{0,31}`` (``github://NS``) for two stores in one run or repository.

Key encoding (`artifact_name`, `key_from_name`): ``/`` becomes ``~`` and an uppercase letter
``X`` becomes ``^x``; keys never hold ``~`` or ``^``, so the mapping is reversible, and names are
lowercase, so they stay distinct even where names compare case-insensitively. Names may not
exceed `NAME_MAX` (256) characters: ``github://`` leaves 249 for the encoded key.

Generations (`generation_name`): when a key's name stays held by an unfinalized artifact whose
writer died, ``github://`` writes the key under ``<name>!1``; ``!`` is in no
encoded key, so `key_from_name` reads every generation back as the same key
(docs/architecture.md, "The github store and GitHub's artifact service").

Store URLs may carry options (``github://NS?retention_days=3``): `parse_store_url` checks them
against the backend's own; `retention_days` checks a retention (1 to 90 days, as GitHub allows).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Collection

from ...errors import UsageError
from ..base import check_key

__all__ = [
    "MAX_GENERATION", "NAME_MAX", "RETENTION_MAX", "RETENTION_MIN", "artifact_name",
    "generation_name", "key_from_name", "name_generation", "name_prefix", "parse_namespace",
    "parse_store_url", "retention_days",
]  # fmt: skip

#: GitHub's limit on artifact names ("must be between 1 and 256 characters")
NAME_MAX = 256
#: the last generation a key may be written under (``<name>!1``): readers look up each one
MAX_GENERATION = 1
#: the retention GitHub accepts for an artifact, in days (the repository's setting may lower it)
RETENTION_MIN, RETENTION_MAX = 1, 90

_NS = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
_KEY_CHAR = re.compile(r"[a-z0-9._=@+-]")


def parse_namespace(url: str, scheme: str) -> str:
    """The namespace of ``scheme://[NS]`` ('' if none); `UsageError` for anything else."""
    return parse_store_url(url, scheme)[0]


def parse_store_url(
    url: str, scheme: str, options: Collection[str] = ()
) -> tuple[str, dict[str, str]]:
    """The namespace and options of ``scheme://[NS][?name=value&...]``; options other than
    ``options`` (and malformed URLs) are a `UsageError`."""
    head, sep, rest = url.partition("://")
    if head != scheme or not sep:
        raise UsageError(f"not a {scheme}:// URL: {url!r}")
    rest, _, query = rest.partition("?")
    ns = rest.rstrip("/")
    if ns and not _NS.fullmatch(ns):
        raise UsageError(
            f"invalid store URL {url!r}: use {scheme}:// or {scheme}://NAMESPACE with "
            "[a-z0-9][a-z0-9._-] (at most 32 characters)"
        )
    found: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in options:
            known = ", ".join(sorted(options)) or "none"
            raise UsageError(f"unknown option {name!r} in store URL {url!r} (options: {known})")
        found[name] = value
    return ns, found


def retention_days(value: str | int, what: str) -> int:
    """``value`` as a number of retention days from 1 to 90; `UsageError` naming ``what``."""
    try:
        days = int(value)
    except ValueError:
        days = 0
    if not RETENTION_MIN <= days <= RETENTION_MAX:
        raise UsageError(
            f"{what} must be a whole number of days from {RETENTION_MIN} to {RETENTION_MAX} "
            f"(GitHub's artifact retention), not {value!r}"
        )
    return days


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


def generation_name(name: str, generation: int) -> str | None:
    """The artifact name of generation ``generation`` of ``name`` (None if it would be too long)."""
    if generation == 0:
        return name
    held = f"{name}!{generation}"
    return held if len(held) <= NAME_MAX else None


def name_generation(name: str) -> tuple[str, int]:
    """The generation-0 name of an artifact name and its generation (``a!2`` -> ``a``, 2)."""
    base, sep, number = name.rpartition("!")
    if sep and number.isdigit() and 1 <= int(number) <= MAX_GENERATION and base:
        return base, int(number)
    return name, 0


def key_from_name(name: str, prefix: str = "ciflow~") -> str | None:
    """The key of an artifact name made by `artifact_name` (any generation), else None."""
    name = name_generation(name)[0]
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
