"""A local emulator of GitHub Actions' artifact service (v4) and cache service (v2).

Both are Twirp JSON services under ``POST /twirp/github.actions.results.api.v1.<Service>/<Method>``
authenticated by the runner's ``ACTIONS_RUNTIME_TOKEN``; their bytes travel through signed URLs of
an Azure-blob-like store (``/blob/...``). The official npm clients ``@actions/artifact`` and
``@actions/cache`` run against it unchanged (see ``tests/js``).

Wire choices (checked against actions/toolkit): requests are read in snake_case or camelCase;
answers are snake_case with int64 as strings (protojson, as github.com answers); every error is
``{"code", "msg"}`` with Twirp's HTTP status. By default artifact names are unique per workflow
run attempt from CreateArtifact on (an unfinalized artifact reserves its name: 409
``already_exists``), only finalized artifacts are listed, a job may create 500 artifacts and an
artifact expires at its ``expires_at``; what GitHub does not document is configurable
(`GitHubEmulator`: ``unfinalized_reserves_name``, ``unfinalized_deletable``,
``unfinalized_listed``, ``list_limit``, ``artifacts_across_attempts``, ``storage_quota_hit``).
A second CreateCacheEntry for a key+version that is reserved or
saved in the same scope gets 409 ``already_exists``. The cache is one repository, its entries
scoped by ref as on GitHub: the runtime token's ``ac`` claim (``[{"Scope": "refs/heads/<b>",
"Permission": 3}, ...]``, read 1 | write 2) lists the job's own ref (read/write) and, read-only,
a pull request's base branch and the default branch (``default_branch``, ``main``); writes go
to the first writable scope, lookups search the readable ones in that order. Blob bytes live
under ``data_dir`` (else in a temporary folder that ``stop()`` removes together with all state);
metadata lives in memory.

It also serves the REST jobs API of its runs (``GET /repos/{owner}/{repo}/actions/runs/{run}
[/attempts/{n}]/jobs`` with the run's ``GITHUB_TOKEN``, paginated): a job is ``in_progress``
from its first `GitHubEmulator.env` and ``completed`` after `GitHubEmulator.finish_job`, which
tests call when a worker process ends, as GitHub does when a job's runner finishes it.
"""

from __future__ import annotations

from .cli import main
from .model import (
    ARTIFACT_LIMIT_PER_JOB,
    ARTIFACT_SERVICE,
    CACHE_SERVICE,
    FAULT_KINDS,
    REPOSITORY,
    BlobError,
    Faults,
    TwirpError,
)
from .service import GitHubEmulator

__all__ = [
    "ARTIFACT_LIMIT_PER_JOB", "ARTIFACT_SERVICE", "CACHE_SERVICE", "FAULT_KINDS", "REPOSITORY",
    "BlobError", "Faults", "GitHubEmulator", "TwirpError", "main",
]  # fmt: skip
