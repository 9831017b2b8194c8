"""Which backend serves which URL scheme, and what the planner and workers should know of it.

One `Backend` entry per scheme: the class that implements it (imported only when a store of
that scheme is opened) and its `StoreProfile`. A new backend is one new file plus one line in
`BACKENDS` (see docs/architecture.md, "Adding a store").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Store

__all__ = ["BACKENDS", "Backend", "StoreProfile", "backend_for", "open_store", "profile_for"]


@dataclass(frozen=True)
class StoreProfile:
    """What a kind of store costs and offers, for the planner and for workers' cadences."""

    #: seconds a transfer of a result or archive between runners costs before its bytes
    latency: float
    #: bytes per second a transfer moves
    bandwidth: float
    #: longest pause between two looks at the store while waiting for a key
    poll: float
    #: how often a worker lists the run's whole namespace (liveness, claims, requests)
    slow_poll: float
    #: how often a worker heartbeats by default
    heartbeat: float
    #: `Store.wait` wakes at once when a key appears (no polling needed)
    pushes: bool = False
    #: one list call returns every key of the store whatever the prefix
    lists_everything: bool = False
    #: workers are CI jobs whose platform API says when one ended (heartbeats not needed)
    ci_jobs_liveness: bool = False
    #: records one CI job may create in the store over a run (deleted ones count too), None
    #: for no limit; the planner keeps every slot's estimate within it (planning/creations.py)
    creations_per_job: int | None = None


@dataclass(frozen=True)
class Backend:
    """One URL scheme: where its class lives (``module:Class``) and its profile."""

    scheme: str
    target: str
    profile: StoreProfile
    example: str

    def load(self) -> type[Store]:
        """Import the backend's class (and its client library) now."""
        module, _, name = self.target.partition(":")
        cls: type[Store] = getattr(importlib.import_module(module, __package__), name)
        return cls


_FILE = StoreProfile(latency=0.02, bandwidth=200e6, poll=0.01, slow_poll=0.25, heartbeat=1.0)
# the results service is rate limited: every look is an API call, so workers look by the plan
# (docs/architecture.md, "What a worker reads, and how often"): every 0.5 s while a result is
# due, at most 15 s apart otherwise
_GITHUB = StoreProfile(
    latency=3.0, bandwidth=20e6, poll=0.5, slow_poll=15.0, heartbeat=30.0,
    lists_everything=True, ci_jobs_liveness=True, creations_per_job=500,
)  # fmt: skip
_GITHUB_CACHE = StoreProfile(latency=3.0, bandwidth=20e6, poll=2.0, slow_poll=5.0, heartbeat=30.0)
# one process's memory: tests and single-process runs; `wait` wakes at once
_MEMORY = StoreProfile(
    latency=1e-4, bandwidth=1e9, poll=0.01, slow_poll=0.05, heartbeat=1.0, pushes=True
)

# a server on the network: pushes new keys (pub/sub), a round trip costs about a millisecond
_REDIS = StoreProfile(
    latency=0.002, bandwidth=100e6, poll=0.05, slow_poll=0.25, heartbeat=1.0, pushes=True
)
# an object store: every call is an HTTP request, listings are paged and cost money
_S3 = StoreProfile(latency=0.05, bandwidth=50e6, poll=0.5, slow_poll=2.0, heartbeat=5.0)
# `ciflow serve`: long-poll waits wake at once
_HTTP = StoreProfile(
    latency=0.005, bandwidth=100e6, poll=0.05, slow_poll=0.25, heartbeat=1.0, pushes=True
)

BACKENDS: dict[str, Backend] = {
    b.scheme: b
    for b in (
        Backend("file", ".file:FileStore", _FILE, "file:///shared/ciflow"),
        Backend("github", ".github.artifacts:GitHubArtifactStore", _GITHUB, "github://"),
        Backend("github-cache", ".github.cache:GitHubCacheStore", _GITHUB_CACHE, "github-cache://"),
        Backend("memory", "..testing.memory:MemoryStore", _MEMORY, "memory://NAME"),
        Backend("redis", ".redis:RedisStore", _REDIS, "redis://HOST:6379/0"),
        Backend("rediss", ".redis:RedisStore", _REDIS, "rediss://HOST:6380/0"),
        Backend("s3", ".s3:S3Store", _S3, "s3://BUCKET/PREFIX"),
        Backend("http", ".http:HttpStore", _HTTP, "http://HOST:PORT (ciflow serve)"),
        Backend("https", ".http:HttpStore", _HTTP, "https://HOST:PORT"),
    )
}


def normalize_url(url: str) -> str:
    """A plain path becomes ``file://<absolute path>``; URLs are returned as they are."""
    if "://" in url:
        return url
    return f"file://{Path(url).expanduser().resolve()}"


def backend_for(url: str) -> Backend:
    """The backend entry for ``url``'s scheme; `UsageError` naming the known ones otherwise."""
    scheme = normalize_url(url).partition("://")[0]
    backend = BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(b.example for b in BACKENDS.values())
        raise UsageError(f"unknown store URL {url!r}: ciflow supports {known}")
    return backend


def profile_for(url: str) -> StoreProfile:
    """The profile of ``url``'s backend, without opening (or importing) it."""
    return backend_for(url).profile


def open_store(url: str, *, poll: float | None = None) -> Store:
    """Open the store for ``url``; the scheme picks the backend (a plain path is a folder).

    ``poll`` overrides the profile's poll interval (how long `Store.wait` sleeps at most).
    """
    url = normalize_url(url)
    store = backend_for(url).load()(url)
    if poll is not None:
        store.poll = poll
    return store
