"""Cache entries in a store: the layout, writing one entry, reading one back.

Keys, under the cache store (docs/architecture.md, "The result cache"), for module ``M`` and
key ``K`` (64 hex digits):

- ``cache/1/M/outputs/K-<sha16>``: the declared outputs, a ``.tar.zst`` archive (as in runs)
- ``cache/1/M/data/K``: the result record (the checksummed format of `distributed.blob`),
  naming the archive, the outputs' content digest and the duration the entry saves
- ``cache/1/M/parts/<stamp>-K``: the key's parts (JSON), to explain the next miss
- ``cache/1/M/keys/K=<result>.<outputs>``: written last; the planner's cheap lookup

Every key is created once (create-if-absent): of two writers of one entry the first wins and
both runs go on. An entry that cannot be read is a miss, never a failure.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..distributed.archive import ArchiveInfo
from ..distributed.blob import OutputRef, ResultHeader, decode_result, encode_result
from ..stores.base import Store
from .digest import SHORT, digest_bytes
from .key import KeyParts, Product

__all__ = ["Entry", "EntryStore", "PREFIX"]

PREFIX = "cache/1"


@dataclass(frozen=True)
class Entry:
    """One stored entry: the result's JSON and what its dependents' keys use."""

    module: str
    key: str
    data: bytes
    duration: float
    outputs_digest: str
    outputs: tuple[OutputRef, ...]

    @property
    def product(self) -> Product:
        return (digest_bytes(self.data), self.outputs_digest)


def stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"


class EntryStore:
    """Reads and writes cache entries in ``store`` (any backend)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _base(self, module: str) -> str:
        return f"{PREFIX}/{module}"

    def read(self, module: str, key: str) -> Entry | None:
        """The entry under ``key``, None if there is none; `BlobError` if it is corrupted."""
        at = f"{self._base(module)}/data/{key}"
        raw = self.store.get(at)
        if raw is None:
            return None
        header, payload = decode_result(raw, key=at)
        if header.module != module:
            raise ValueError(f"cache entry {at} belongs to module {header.module!r}")
        prefix = f"{self._base(module)}/outputs/{key}-"
        if any(not ref.key.startswith(prefix) for ref in header.outputs):
            raise ValueError(f"cache entry {at} names outputs outside its own entry")
        return Entry(
            module, key, payload, header.duration, header.outputs_digest or "-",
            tuple(header.outputs),
        )  # fmt: skip

    def fetch_outputs(self, ref: OutputRef, dest: Path, patterns: Sequence[str]) -> bool:
        """Download one outputs archive into ``dest``; False if it is gone."""
        getter = getattr(self.store, "get_archive_to_file", None)
        if getter is not None:  # github-cache: under the version @actions/cache computes
            return bool(getter(ref.key, dest, list(patterns)))
        return self.store.get_to_file(ref.key, dest)

    def last_parts(self, module: str) -> KeyParts | None:
        """The parts of the newest entry stored for ``module`` (None: none, or unreadable)."""
        found = self.store.newest_key(f"{self._base(module)}/parts/")
        if found is None:
            return None
        raw = self.store.get(found)
        try:
            return None if raw is None else KeyParts.from_json(raw)
        except ValueError:
            return None

    def write(
        self,
        parts: KeyParts,
        data: bytes,
        duration: float,
        archive: ArchiveInfo | None,
        outputs_digest: str,
        patterns: Sequence[str] = (),
    ) -> bool:
        """Store one entry (outputs, data, parts, marker); False if another writer was first.

        ``patterns``: the module's declared outputs (what ``github-cache://`` versions an
        archive with, so that ``actions/cache`` with the same paths restores it).
        """
        module, key = parts.module, parts.key()
        base = self._base(module)
        refs: list[OutputRef] = []
        if archive is not None:
            ref_key = f"{base}/outputs/{key}-{archive.sha256[:16]}"
            creator = getattr(self.store, "create_archive", None)
            if creator is not None:  # github-cache: restorable by the official actions/cache
                creator(ref_key, archive.path, list(patterns))
            else:
                self.store.create_from_file(ref_key, archive.path)
            refs.append(
                OutputRef(
                    key=ref_key, sha256=archive.sha256, size=archive.size,
                    unpacked=archive.file_bytes,
                )
            )  # fmt: skip
        now = time.time()
        header = ResultHeader(
            module=module, attempt=1, worker=socket.gethostname() or "ciflow", outcome="succeeded",
            started=now - duration, finished=now, duration=duration, outputs=refs,
            outputs_digest=outputs_digest,
        )  # fmt: skip
        if not self.store.create(f"{base}/data/{key}", encode_result(header, data)):
            return False
        self.store.create(f"{base}/parts/{stamp()}-{key}", parts.to_json().encode())
        marker = f"{base}/keys/{key}={digest_bytes(data)}.{outputs_digest[:SHORT]}"
        info = {"created": now, "duration": duration, "bytes": len(data)}
        self.store.create(marker, json.dumps(info).encode())
        return True

    def drop(self, module: str, key: str) -> None:
        """Delete an entry that cannot be used (its marker first), so it can be written again."""
        base = self._base(module)
        marker = self.store.newest_key(f"{base}/keys/{key}=")
        if marker is not None:
            self.store.delete(marker)
        self.store.delete(f"{base}/data/{key}")

    def marker(self, module: str, key: str) -> Product | None:
        """The product recorded with a complete entry under ``key``, without downloading it."""
        found = self.store.newest_key(f"{self._base(module)}/keys/{key}=")
        if found is None:
            return None
        result, _, outputs = found.rpartition("=")[2].partition(".")
        return (result, outputs)

    def temp_archive(self) -> tempfile.TemporaryDirectory[str]:
        return tempfile.TemporaryDirectory(prefix="ciflow-cache-")
