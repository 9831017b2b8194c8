"""The GitHub Actions artifact store, ``github://``: one artifact (v4) per key in the current run.

URL forms: ``github://`` (artifact names ``ciflow~…``) or ``github://NS`` (names ``ciflow-NS~…``);
keys are encoded into artifact names by `artifact_name` (see `ciflow.stores.github.naming`). The
runner's configuration is read by `ciflow.stores.github.runtime`.

Protocol (the Twirp JSON service of ``@actions/artifact``, `ciflow.stores.github.twirp`):
CreateArtifact, an upload to the signed Azure URL (`ciflow.stores.github.blobs`),
FinalizeArtifact; ListArtifacts, GetSignedArtifactURL and a download; DeleteArtifact. A value is
a ZIP archive with one member ``data`` (`ciflow.stores.github.zipframe`).

Atomic create: CreateArtifact answers 409 for a name that exists in the run. Whether an
unfinalized artifact already reserves its name is not confirmed, so the winner is decided by
reading back: after FinalizeArtifact, list the artifacts of that name; the winner is the entry
with the lowest ``database_id`` (then ``created_at``). Only FinalizeArtifact returns an artifact
id, so ids are taken to be given at finalization: the lowest id is the earliest finalized entry,
and every racer that reads back after its own finalization sees it. A loser deletes its entry
when that cannot hit another one (the winner belongs to another job); readers always use the
winner, and `GitHubArtifactStore.delete` removes the winner.

API calls (``self.stats`` counts each HTTP attempt by RPC name, ``blob-upload`` and
``blob-download``, next to the operation names): create = CreateArtifact + upload (1 PUT, or
blocks + 1 block list) + FinalizeArtifact + ListArtifacts; create of an existing key = 1;
get = ListArtifacts + GetSignedArtifactURL + download (1 if absent); list = 1 ListArtifacts for
every job of the run; delete = ListArtifacts + DeleteArtifact (1 if absent); exists = 0 within
`poll` of the last listing, else 1 ListArtifacts.

Retries: the shared `Transport` retries transient failures up to ``max_attempts`` times with
capped, jittered backoff or as long as ``Retry-After`` says; ``stats`` counts them as
``retries``.

Lost answers: when a retried CreateArtifact gets 409 after an attempt whose answer was lost, the
name may be held by our own unfinalized artifact; if no finalized entry exists, the store deletes
its job's artifact of that name and creates again (a 409 without a lost answer is just False). A
retried FinalizeArtifact that fails is settled by the read-back. Creates of one name by one job
are serialised within a process, so "our entry" is the one of our job. The rule assumes the
listing shows every finalized artifact (a missing own entry is listed again after short pauses).

Limits: GitHub keeps at most 500 artifacts per job; a writer that dies between CreateArtifact and
FinalizeArtifact may leave its name blocked for the run if GitHub reserves names at creation
(create then answers False and get None).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
import time
import zlib
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import StoreError
from .blobs import CHUNK, Pieces
from .download import DownloadingStore, Sink
from .naming import artifact_name, key_from_name, name_prefix
from .twirp import TwirpError, get_field
from .zipframe import unzip_first, zip_frame

__all__ = ["ARTIFACT_SERVICE", "GitHubArtifactStore"]

ARTIFACT_SERVICE = "github.actions.results.api.v1.ArtifactService"
#: the artifact version the v4 toolkit creates (a zip archive)
ARTIFACT_VERSION = 4
#: pauses before listing again when the read-back after FinalizeArtifact misses our artifact
READ_BACK_PAUSES = (0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Entry:
    """One finalized artifact of the run."""

    name: str
    job_id: str
    id: int
    created_at: str

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Entry:
        try:
            ident = int(get_field(raw, "database_id") or 0)
        except (TypeError, ValueError):
            ident = 0
        created = get_field(raw, "created_at")
        return cls(
            name=str(raw.get("name") or ""),
            job_id=str(get_field(raw, "workflow_job_run_backend_id") or ""),
            id=ident,
            created_at=created if isinstance(created, str) else json.dumps(created),
        )


_NAME_LOCKS: dict[tuple[str, ...], tuple[threading.Lock, int]] = {}
_NAME_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _name_lock(*ident: str) -> Iterator[None]:
    """Serialise creates of one name by one job within this process (so "ours" is unique)."""
    with _NAME_LOCKS_GUARD:
        lock, users = _NAME_LOCKS.get(ident, (threading.Lock(), 0))
        _NAME_LOCKS[ident] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _NAME_LOCKS_GUARD:
            lock, users = _NAME_LOCKS[ident]
            if users == 1:
                del _NAME_LOCKS[ident]
            else:
                _NAME_LOCKS[ident] = (lock, users - 1)


def _earliest_first(entry: Entry) -> tuple[int, str]:
    return entry.id, entry.created_at


class GitHubArtifactStore(DownloadingStore):
    """A store in the artifacts of the current workflow run, shared by all its jobs."""

    scheme = "github"
    service = ARTIFACT_SERVICE

    def _setup(self) -> None:
        self.prefix = name_prefix(self.namespace)
        self._listed: dict[str, Entry] = {}  # name -> earliest finalized entry, last listing
        self._own: set[str] = set()  # names this store created (and won): deleted without a look
        # the newest listing and its time (as this store's own creates and deletes changed it)
        self._fresh: tuple[float, list[Entry]] = (float("-inf"), [])
        self._polled = 0.0  # the time of the listing `wait` looked at last
        self._fresh_changed = threading.Condition()

    # -- helpers ---------------------------------------------------------------------------------

    def _ids(self, job_id: str | None = None) -> dict[str, str]:
        return {
            "workflow_run_backend_id": self.runtime.run_id,
            "workflow_job_run_backend_id": job_id or self.runtime.job_id,
        }

    def _entries(self, name: str | None = None) -> list[Entry]:
        """Finalized artifacts of the run (with ``name`` only), earliest first.

        Always one unfiltered ListArtifacts call (it costs the same as a filtered one): every
        listing, a create's read-back included, refreshes what `list`, `get` and `wait` see.
        """
        resp, _ = self.twirp.rpc("ListArtifacts", self._ids())
        raw = resp.get("artifacts") or []
        entries = [Entry.parse(a) for a in raw if isinstance(a, dict)]
        entries.sort(key=_earliest_first)
        with self._fresh_changed:
            for entry in reversed(entries):  # earliest last: the winner of each name stays
                self._listed[entry.name] = entry
            self._fresh = (time.monotonic(), entries)
            self._fresh_changed.notify_all()
        if name is not None:
            entries = [e for e in entries if e.name == name]
        return entries

    def _remember(self, entry: Entry) -> None:
        """Add an artifact this store just created and won to what it knows of the listing."""
        with self._fresh_changed:
            self._listed.setdefault(entry.name, entry)
            stamp, entries = self._fresh
            self._fresh = (stamp, sorted([*entries, entry], key=_earliest_first))

    def _forget(self, name: str, job_id: str) -> None:
        """Drop an artifact this store deleted from what it knows of the listing."""
        with self._fresh_changed:
            stamp, entries = self._fresh
            self._fresh = (stamp, [e for e in entries if (e.name, e.job_id) != (name, job_id)])

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

    def _name(self, key: str) -> str:
        return artifact_name(key, self.prefix)

    # -- create ----------------------------------------------------------------------------------

    def _create(self, key: str, name: str, pieces: Pieces, total: int, sole: bool) -> bool:
        with _name_lock(self.runtime.origin, self.runtime.run_id, self.runtime.job_id, name):
            for _ in range(self.transport.max_attempts):  # again only after removing our own orphan
                try:
                    resp, _ = self.twirp.rpc(
                        "CreateArtifact", {**self._ids(), "name": name, "version": ARTIFACT_VERSION}
                    )
                except TwirpError as exc:
                    if not exc.exists:
                        raise
                    if exc.ambiguous and self._remove_own_orphan(name):
                        continue
                    return False
                upload_url = get_field(resp, "signed_upload_url")
                if get_field(resp, "ok") is False or not isinstance(upload_url, str):
                    raise StoreError(f"github store: CreateArtifact for {key!r} was not accepted")
                return self._upload_and_decide(key, name, upload_url, pieces, total, sole)
        raise StoreError(
            f"github store: cannot create {key!r}: its name stays taken by a lost request"
        )

    def _remove_own_orphan(self, name: str) -> bool:
        """After a lost CreateArtifact answer and a 409: drop our unfinalized artifact if any."""
        if self._entries(name):
            return False  # a finalized value exists: the key is taken
        return self._delete_entry(name, self.runtime.job_id)

    def _upload_and_decide(
        self, key: str, name: str, url: str, pieces: Pieces, total: int, sole: bool
    ) -> bool:
        try:
            sha = self.blobs.upload(url, pieces, total)
        except Exception:
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)  # release the name
            raise
        body = {**self._ids(), "name": name, "size": str(total), "hash": f"sha256:{sha}"}
        ours: int | None = None
        try:
            resp, _ = self.twirp.rpc("FinalizeArtifact", body)
            if get_field(resp, "ok") is False:
                with contextlib.suppress(StoreError):
                    self._delete_entry(name, self.runtime.job_id)
                raise StoreError(f"github store: FinalizeArtifact for {key!r} was not accepted")
            with contextlib.suppress(TypeError, ValueError):
                ours = int(get_field(resp, "artifact_id") or 0) or None
        except TwirpError as exc:
            if not exc.ambiguous:  # may have finalized on a lost attempt: read back below
                with contextlib.suppress(StoreError):
                    self._delete_entry(name, self.runtime.job_id)
                raise
            ours = None
        if sole and ours is not None:
            self._own.add(name)
            self._remember(Entry(name, self.runtime.job_id, ours, ""))
            return True  # finalized, and nobody else creates this key: no read-back needed
        entries = self._entries(name)
        for pause in READ_BACK_PAUSES:  # ours must be listed: give a lagging listing a moment
            if any(e.job_id == self.runtime.job_id for e in entries):
                break
            self.transport.sleep(pause)
            entries = self._entries(name)
        mine = [e for e in entries if e.job_id == self.runtime.job_id]
        if ours is None and len(mine) == 1:
            ours = mine[0].id
        if ours is None or all(e.id != ours for e in entries):
            # not finalized, or deleted at once by another client: not in the store
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)
            if ours is None:
                raise StoreError(f"github store: FinalizeArtifact for {key!r} left no artifact")
            return False
        winner = entries[0]
        if winner.id == ours:
            self._own.add(name)
            return True
        if winner.job_id != self.runtime.job_id and len(mine) == 1:
            with contextlib.suppress(StoreError):
                self._delete_entry(name, self.runtime.job_id)
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
        winner = self._listed.get(name)  # from the last full listing: saves a ListArtifacts
        url: object = None
        for fresh in (winner is None, True):
            if fresh:
                entries = self._entries(name)
                if not entries:
                    return False
                winner = entries[0]
            assert winner is not None
            try:
                resp, _ = self.twirp.rpc(
                    "GetSignedArtifactURL", {**self._ids(winner.job_id), "name": name}
                )
            except TwirpError as exc:
                if not exc.not_found:
                    raise
                self._listed.pop(name, None)
                if fresh:
                    return False  # deleted since the listing
                continue  # the listed one went (a loser of a create race): list again
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
        return self._keys(self._entries(), prefix)

    def _wait(
        self, prefix: str, known: Collection[str], deadline: float, poll: float
    ) -> builtins.list[str]:
        """`Store.wait`, listing at most once per ``poll``.

        A listing this store made meanwhile for another reason (a create's read-back, a get)
        counts as that poll, and wakes the waiter at once.
        """
        while True:
            with self._fresh_changed:
                stamp, entries = self._fresh
                now = time.monotonic()
                fresh: list[Entry] | None = None
                if stamp > self._polled:  # a listing nobody waiting has looked at yet
                    self._polled = stamp
                    fresh = entries
                elif now - stamp < poll:  # too early for a poll
                    remaining = deadline - now
                    if remaining <= 0:
                        return self._keys(entries, prefix)
                    self._fresh_changed.wait(min(stamp + poll - now, remaining))
                    continue
            if fresh is None:
                self.stats.add("list")
                fresh = self._entries()
                with self._fresh_changed:
                    self._polled = max(self._polled, self._fresh[0])
            keys = self._keys(fresh, prefix)
            if time.monotonic() >= deadline or any(k not in known for k in keys):
                return keys

    def exists(self, key: str) -> bool:
        """Whether ``key`` has a value, from a listing at most `poll` old (else 1 ListArtifacts).

        Like `wait`, it answers from this store's newest listing (of a `list`, a `get`, a
        create's read-back) while that is recent: a key another job created or deleted since
        may be missed until the next listing. Its own creates and deletes it sees at once.
        """
        name = self._name(key)
        self.stats.add("exists")
        with self._fresh_changed:
            stamp, entries = self._fresh
        if time.monotonic() - stamp >= self.poll:
            entries = self._entries()
        return any(e.name == name for e in entries)

    def delete(self, key: str) -> None:
        """Delete the artifact holding ``key``'s value, the earliest of its name (absent is fine).

        Later entries of the name are racers' leftovers that their writers remove; deleting
        them here could remove a value created while this delete runs. A value this store
        created is deleted without listing first.
        """
        name = self._name(key)
        self.stats.add("delete")
        self._listed.pop(name, None)
        if name in self._own:  # ours, and the earliest of its name: no need to look
            self._own.discard(name)
            self._delete_entry(name, self.runtime.job_id)
            self._forget(name, self.runtime.job_id)
            return
        entries = self._entries(name)
        if entries:
            self._delete_entry(name, entries[0].job_id)
            self._forget(name, entries[0].job_id)
