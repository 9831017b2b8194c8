"""The GitHub Actions artifact store, ``github://``: one artifact (v4) per key in the current run.

URL forms: ``github://`` (artifact names ``ciflow~…``) or ``github://NS`` (``ciflow-NS~…``), with
``?retention_days=N`` (1 to 90; else ``CIFLOW_RETENTION_DAYS``, else 1) and ``?stale_after=S``
(300). Keys become artifact names by `artifact_name` (`ciflow.stores.github.naming`).

Protocol (the Twirp JSON service of ``@actions/artifact``, `ciflow.stores.github.twirp`):
CreateArtifact (``version`` 7, ``mime_type`` application/zip, ``expires_at`` now + the
retention, as the toolkit sends them), an upload to the signed blob URL, FinalizeArtifact;
ListArtifacts, GetSignedArtifactURL and a download; DeleteArtifact. A value is a ZIP archive
with one member ``data`` (`ciflow.stores.github.zipframe`).

Nothing here rests on what GitHub does not document (docs/architecture.md, "The github store
and GitHub's artifact service"; `tests/test_github_assumptions.py` runs every combination):

- **Create-once.** A 409 only says a name is held. A finalized artifact wins when no other of
  its name can exist (names held from CreateArtifact on, found out once per run: the run's
  probe name, never finalized, answers 409: `ciflow.stores.github.creates.probe`), else by
  reading the name back: the value is the winner of `ciflow.stores.github.listing.winner`
  (lowest generation, then id); a loser deletes its own.
- **Unfinalized artifacts** may hold their name, be listed (size 0: never a value) or not be
  deletable. A 409 without a value is waited for; held for ``stale_after`` seconds, the key
  moves to its next generation name (``<name>!1``), which readers look up too. A writer that
  could not finalize within half of ``stale_after`` gives its artifact up and starts again.
- **Listings may be parts of the run** (ListArtifacts cannot page): `get`, `delete` and a
  missed `exists` look names up (``name_filter``); `list` keeps what earlier listings showed
  once one is shown to be cut (`ciflow.stores.github.listing.View`).
- **Budget**: every creation counts against GitHub's 500 per job (`ciflow.stores.github.budget`,
  `creations_left`); past it, and on the account's storage quota, a create fails in one line.

API calls (``self.stats`` counts each HTTP attempt by RPC name, ``blob-upload``,
``blob-download``): create = CreateArtifact + upload (1 PUT, or blocks + 1 block list) +
FinalizeArtifact (+ 1 ListArtifacts by name where names may have duplicates; the probe once);
create of an existing key = CreateArtifact + 1 ListArtifacts by name unless a recent listing
shows it; get = GetSignedArtifactURL + download, after 1 ListArtifacts by name per generation
unless a listing showed the key; list = 1 ListArtifacts; delete = DeleteArtifact after a lookup
by name (none for a key this store created); exists = 0 when a listing at most `poll` old shows
the key, else a lookup. Retries: the shared `Transport`. A retried CreateArtifact that gets 409
after a lost answer may meet our own unfinalized artifact: without a value, the store deletes
its job's artifact of the name and creates again; a retried FinalizeArtifact that fails is
settled by the read-back. Creates of one name by one job are serialised within a process.
"""

from __future__ import annotations

import builtins
import contextlib
import time
import zlib
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..base import StoreError
from .blobs import CHUNK, Pieces
from .budget import ARTIFACT_BUDGET, Budget, budget_error, quota_error
from .creates import Again, Held, exclusive, failpoint, name_lock, probe
from .download import DownloadingStore, Sink
from .listing import Entry, View, winner
from .naming import (
    MAX_GENERATION,
    artifact_name,
    generation_name,
    key_from_name,
    name_generation,
    name_prefix,
    retention_days,
)
from .twirp import TwirpError, get_field
from .zipframe import unzip_first, zip_frame

__all__ = ["ARTIFACT_SERVICE", "GitHubArtifactStore"]

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
#: what CreateArtifact says of the artifact, as ``@actions/artifact`` 2.3+ sends it
ARTIFACT_VERSION = 7
MIME_TYPE = "application/zip"
#: days an artifact is kept unless the URL or ``CIFLOW_RETENTION_DAYS`` say otherwise
DEFAULT_RETENTION_DAYS = 1
#: seconds a name held by an unfinalized artifact is waited for before the next generation
STALE_AFTER = 300.0
#: pauses before looking up again when the read-back misses our artifact
READ_BACK_PAUSES = (0.2, 0.5, 1.0)


class GitHubArtifactStore(DownloadingStore):
    """A store in the artifacts of the current workflow run, shared by all its jobs."""

    scheme = "github"
    service = ARTIFACT_SERVICE
    url_options = frozenset({"retention_days", "stale_after"})

    def _setup(self) -> None:
        self.prefix = name_prefix(self.namespace)
        days = self.options.get("retention_days") or self.env.get("CIFLOW_RETENTION_DAYS")
        what = "retention_days" if "retention_days" in self.options else "CIFLOW_RETENTION_DAYS"
        self.retention_days = retention_days(days or DEFAULT_RETENTION_DAYS, what)
        self.stale_after = STALE_AFTER
        if "stale_after" in self.options:
            try:
                self.stale_after = float(self.options["stale_after"])
            except ValueError:
                self.stale_after = -1.0
            if not self.stale_after > 0:
                raise UsageError(f"stale_after in {self.url!r} must be a number of seconds")
        runtime = self.runtime
        self.budget = Budget(runtime.origin, runtime.run_id, runtime.job_id, limit=ARTIFACT_BUDGET)
        self.view = View()
        #: whether CreateArtifact holds a name from creation on (None: probe the service)
        self.names_held: bool | None = None
        self._burnt: dict[str, int] = {}  # base name -> the first generation not known held
        self._polled = 0.0  # the time of the listing `wait` looked at last

    def creations_left(self) -> int | None:
        """Artifacts this job may still create (GitHub's 500 per job, deleted ones count)."""
        return self.budget.left()

    # -- helpers ---------------------------------------------------------------------------------

    def _ids(self, job_id: str | None = None) -> dict[str, str]:
        return {
            "workflow_run_backend_id": self.runtime.run_id,
            "workflow_job_run_backend_id": job_id or self.runtime.job_id,
        }

    def _list_all(self) -> list[Entry]:
        """One unfiltered ListArtifacts: what `list`, `wait` and `exists` see (it may be a part
        of the run; an artifact of ours it misses is looked up to find out)."""
        sent = time.monotonic()
        resp, _ = self.twirp.rpc("ListArtifacts", self._ids())
        raw = [Entry.parse(a) for a in resp.get("artifacts") or [] if isinstance(a, dict)]
        missing = self.view.note(raw, sent)
        if missing:
            if any(e.value for e in self._lookup(missing[0].name)):
                self.view.cut()
            else:
                self.view.gone(missing[0])  # another job deleted it
        return self.view.snapshot()[1]

    def _lookup(self, name: str) -> list[Entry]:
        """The artifacts named ``name``, finalized or not (ListArtifacts by name), by id."""
        resp, _ = self.twirp.rpc("ListArtifacts", {**self._ids(), "name_filter": name})
        found = [Entry.parse(a) for a in resp.get("artifacts") or [] if isinstance(a, dict)]
        return sorted((e for e in found if e.name == name), key=Entry.order)

    def _values(self, name: str, upto: int = MAX_GENERATION) -> list[Entry]:
        """The finalized artifacts of a key (``name``: generation 0) by name, earliest first:
        generations up to ``upto``, stopping at the first that has one."""
        for gen in range(upto + 1):
            current = generation_name(name, gen)
            if current is None:
                break
            found = [e for e in self._lookup(current) if e.value]
            if found:
                return found
        return []

    def _keys(self, entries: list[Entry], prefix: str) -> list[str]:
        keys = {key_from_name(e.name, self.prefix) for e in entries}
        return sorted(k for k in keys if k is not None and k.startswith(prefix))

    def _delete_entry(self, name: str, job_id: str) -> bool:
        """DeleteArtifact; False if there was nothing to delete."""
        try:
            self.twirp.rpc("DeleteArtifact", {**self._ids(job_id), "name": name})
        except TwirpError as exc:
            if exc.not_found:
                return exc.ambiguous  # not found after a lost answer: that attempt deleted it
            raise
        return True

    def _release(self, name: str) -> None:
        """Delete our artifact of ``name`` (an upload we give up), errors aside."""
        with contextlib.suppress(StoreError):
            self._delete_entry(name, self.runtime.job_id)

    def _name(self, key: str) -> str:
        return artifact_name(key, self.prefix)

    def _body(self, name: str) -> dict[str, Any]:
        expires = datetime.now(UTC) + timedelta(days=self.retention_days)
        return {
            **self._ids(), "name": name, "version": ARTIFACT_VERSION, "mime_type": MIME_TYPE,
            "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }  # fmt: skip

    # -- create ----------------------------------------------------------------------------------

    def _create(self, key: str, name: str, pieces: Pieces, total: int, sole: bool) -> bool:
        runtime = self.runtime
        with name_lock(runtime.origin, runtime.run_id, runtime.job_id, name):
            gen, again = self._burnt.get(name, 0), 0
            held = Held(self.stale_after)
            while gen <= MAX_GENERATION and again <= self.transport.max_attempts:
                current = generation_name(name, gen)
                if current is None:
                    break
                outcome = self._attempt(key, name, current, gen, pieces, total, sole)
                if outcome is Again.HELD:
                    if self._values(name, min(gen + 1, MAX_GENERATION)):
                        return False  # a value showed (here, or a successor's)
                    if held.over():  # its writer is taken for dead
                        gen, held = gen + 1, Held(self.stale_after)
                        self._burnt[name] = gen
                    else:
                        self.transport.sleep(held.pause())
                elif outcome is Again.SAME:
                    again += 1
                else:
                    return outcome
        if again > self.transport.max_attempts:
            raise StoreError(
                f"github store: cannot create {key!r}: {again} uploads were lost or took longer "
                f"than half of stale_after ({self.stale_after:g} s); raise ?stale_after= in the "
                "store URL on a slow network"
            )
        raise StoreError(
            f"github store: cannot create {key!r}: its artifact names stay held by uploads that "
            "were never finalized (writers that died, or lost requests); use another store "
            "or re-run the workflow"
        )

    def _attempt(
        self, key: str, name: str, current: str, gen: int, pieces: Pieces, total: int, sole: bool
    ) -> bool | Again:
        """One CreateArtifact of ``current`` (generation ``gen`` of ``name``) and what follows."""
        started = time.monotonic()
        self.budget.spend(key)
        try:
            resp, _ = self.twirp.rpc("CreateArtifact", self._body(current))
        except TwirpError as exc:
            if not exc.ambiguous:
                self.budget.refund()
            if exc.limit:
                raise budget_error(key, self.budget.limit, self.budget.used, exc.msg) from None
            if exc.quota:
                raise quota_error(key, exc.msg) from None
            if not exc.exists:
                raise
            if exc.ambiguous and self._remove_own_orphan(name, current, gen):
                return Again.SAME
            stamp, entries = self.view.snapshot()
            if time.monotonic() - stamp < self.poll and any(e.base == name for e in entries):
                return False  # the newest listing shows the value: no need to look
            return Again.HELD
        upload_url = get_field(resp, "signed_upload_url")
        if get_field(resp, "ok") is False or not isinstance(upload_url, str):
            raise StoreError(f"github store: CreateArtifact for {key!r} was not accepted")
        return self._upload_and_decide(key, current, gen, upload_url, pieces, total, sole, started)

    def _remove_own_orphan(self, name: str, current: str, gen: int) -> bool:
        """After a lost CreateArtifact answer and a 409: drop our unfinalized artifact if any."""
        if self._values(name, gen):
            return False  # a finalized value exists: the key is taken
        return self._delete_entry(current, self.runtime.job_id)

    def _upload_and_decide(
        self, key: str, name: str, gen: int, url: str, pieces: Pieces, total: int, sole: bool,
        started: float,
    ) -> bool | Again:  # fmt: skip
        try:
            sha = self.blobs.upload(url, pieces, total)
        except Exception:
            self._release(name)
            raise
        failpoint(key)
        if not sole and time.monotonic() - started > self.stale_after / 2:
            self._release(name)  # too late to finalize: others may take us for dead
            return Again.SAME
        body = {**self._ids(), "name": name, "size": str(total), "hash": f"sha256:{sha}"}
        ours: int | None = None
        try:
            resp, _ = self.twirp.rpc("FinalizeArtifact", body)
            if get_field(resp, "ok") is False:
                self._release(name)
                raise StoreError(f"github store: FinalizeArtifact for {key!r} was not accepted")
            with contextlib.suppress(TypeError, ValueError):
                ours = int(get_field(resp, "artifact_id") or 0) or None
        except TwirpError as exc:
            if exc.exists:  # another artifact of the name was finalized first
                self._release(name)
                return False
            if not exc.ambiguous:  # may have finalized on a lost attempt: read back below
                self._release(name)
                if exc.not_found:
                    return Again.SAME  # our unfinalized artifact went (deleted, expired)
                raise
        late = time.monotonic() - started
        if ours is not None and (sole or (gen == 0 and late <= self.stale_after and self._alone())):
            self.view.won(Entry(name, self.runtime.job_id, ours, "", total))
            return True  # finalized, and no other artifact of the name can be: no read-back
        return self._read_back(key, name, gen, ours, late)

    def _alone(self) -> bool:
        """Whether a finalized artifact is the only one of its name (names held from
        CreateArtifact on): ``names_held``, else `probe` once per run and process."""
        if self.names_held is not None:
            return self.names_held
        return exclusive((self.runtime.origin, self.runtime.run_id), lambda: probe(self))

    def _read_back(
        self, key: str, name: str, gen: int, ours: int | None, late: float
    ) -> bool | Again:
        """Decide a finalized create from the key's artifacts by name: ours must be the winner."""
        base = name_generation(name)[0]
        entries = self._values(base, gen)
        if entries and entries[0].generation < gen:  # a value in an earlier generation wins
            self._release(name)
            return False
        job = self.runtime.job_id
        for pause in READ_BACK_PAUSES:  # ours must be listed: give a lagging listing a moment
            if any(e.job_id == job and e.name == name for e in entries):
                break
            self.transport.sleep(pause)
            entries = self._values(base, gen)
        mine = [e for e in entries if e.job_id == job and e.name == name]
        if ours is None and len(mine) == 1:
            ours = mine[0].id
        if ours is None or all(e.id != ours for e in mine):
            # not finalized, or deleted at once by another client: not in the store
            self._release(name)
            if ours is None:
                raise StoreError(f"github store: FinalizeArtifact for {key!r} left no artifact")
            return False
        best = winner(entries)
        if best is not None and best.id == ours and best.name == name:
            if late > self.stale_after:  # taken for dead meanwhile? never claim a late win
                self._release(name)
                return Again.SAME
            self.view.won(best)
            return True
        if best is not None and (best.job_id != job or best.name != name) and len(mine) == 1:
            self._release(name)
        return False

    def create(self, key: str, data: bytes, *, sole: bool = False) -> bool:
        """Create the artifact of ``key`` unless one exists (read back decides). True if written.

        With ``sole`` (nobody else creates ``key``) a finalized upload is not read back: one
        ListArtifacts call fewer.
        """
        name = self._name(key)
        self.stats.add("create")
        view = memoryview(data)
        head, tail = zip_frame(len(view), zlib.crc32(view))
        return self._create(
            key, name, lambda: (head, view, tail), len(head) + len(view) + len(tail), sole
        )

    def create_from_file(self, key: str, path: Path, *, sole: bool = False) -> bool:
        """Like `create`, streaming ``path`` into block uploads (never all in memory)."""
        name = self._name(key)
        self.stats.add("create_from_file")
        path = Path(path)
        crc, size = 0, 0
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(CHUNK):
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
        except OSError as exc:
            raise StoreError(f"cannot store {path} under {key!r}: {exc.strerror or exc}") from exc
        head, tail = zip_frame(size, crc)

        def pieces() -> Iterator[bytes | memoryview]:
            yield head
            left = size
            try:
                with open(path, "rb") as fh:
                    while left > 0 and (chunk := fh.read(min(CHUNK, left))):
                        left -= len(chunk)
                        yield chunk
            except OSError as exc:
                raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
            if left:
                raise StoreError(f"{path} shrank while it was stored under {key!r}")
            yield tail

        return self._create(key, name, pieces, len(head) + size + len(tail), sole)

    # -- get ------------------------------------------------------------------------------------

    def _download(self, key: str, sink: Sink) -> bool:
        name = self._name(key)
        known = None if self.view.suspect() else self.view.winners.get(name)
        url: object = None
        for fresh in (known is None, True):
            if fresh:
                known = winner(self._values(name))
                if known is None:
                    return False
            assert known is not None
            try:
                resp, _ = self.twirp.rpc(
                    "GetSignedArtifactURL", {**self._ids(known.job_id), "name": known.name}
                )
            except TwirpError as exc:
                if not exc.not_found:
                    raise
                self.view.forget(name)
                if fresh:
                    return False  # deleted since the lookup
                continue  # the listed one went (a loser of a create race): look it up
            url = get_field(resp, "signed_url")
            break
        if not isinstance(url, str) or not url:
            raise StoreError(f"github store: GetSignedArtifactURL for {key!r} gave no URL")

        def consume(chunks: Iterator[bytes]) -> bool:
            unzip_first(chunks, sink(), f"artifact {name!r}")
            return True

        return bool(self.blobs.download(url, consume))

    # -- list / delete / close ------------------------------------------------------------------

    def list(self, prefix: str) -> list[str]:
        """Sorted keys starting with ``prefix`` (one ListArtifacts call sees every job's)."""
        self.stats.add("list")
        return self._keys(self._list_all(), prefix)

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """`Store.wait`, listing at most once per ``poll``.

        A listing this store made meanwhile for another reason (a `list`, an `exists`) counts
        as that poll, and wakes the waiter at once.
        """
        view = self.view
        while True:
            with view.changed:
                stamp, entries = view.stamp, list(view.entries)
                now = time.monotonic()
                fresh: list[Entry] | None = None
                if stamp > self._polled:  # a listing nobody waiting has looked at yet
                    self._polled = stamp
                    fresh = entries
                elif now - stamp < poll:  # too early for a poll
                    remaining = deadline - now
                    if remaining <= 0:
                        return self._keys(entries, prefix)
                    view.changed.wait(min(stamp + poll - now, remaining))
                    continue
            if fresh is None:
                self.stats.add("list")
                fresh = self._list_all()
                with view.changed:
                    self._polled = max(self._polled, view.stamp)
            keys = self._keys(fresh, prefix)
            if time.monotonic() >= deadline or any(k not in known for k in keys):
                return keys

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value: from a listing at most `poll` old when it shows the key
        (its own creates and deletes this store sees at once), else looked up by name (a
        listing may be a part of the run): a key another job deleted since may still show.
        """
        name = self._name(key)
        self.stats.add("exists")
        stamp, entries = self.view.snapshot()
        if time.monotonic() - stamp < self.poll and any(e.base == name for e in entries):
            return True
        return bool(self._values(name))

    def delete(self, key: str) -> None:
        """Delete the artifact holding ``key``'s value (absent is fine).

        Later entries of its name are racers' leftovers that their writers remove; deleting
        them here could remove a value created while this delete runs. A value this store
        created is deleted without looking it up first.
        """
        name = self._name(key)
        self.stats.add("delete")
        own = self.view.own.get(name)
        found = own or winner(self._values(name))
        self.view.forget(name)
        if found is not None:
            self._delete_entry(found.name, found.job_id)
            self.view.gone(found)
