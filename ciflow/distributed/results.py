"""The result store: module results and shipped outputs of a run, read and written.

A module's result lives at ``results/<module>`` and is created once: the first result written
wins, a late one from an older attempt is discarded. Declared outputs are uploaded first (as a
zstd tar under ``outputs/<module>/<attempt>``), so a readable result implies readable outputs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from ..model.outcome import ModuleRecord, Outcome, RunResult
from ..stores.base import Store, StoreError
from .blob import OutputRef, ResultHeader, decode_result, encode_result
from .keys import RunKeys

__all__ = ["ResultCache", "publish_result", "read_run"]


def publish_result(
    store: Store,
    keys: RunKeys,
    record: ModuleRecord,
    *,
    attempt: int,
    worker: str,
    slot: int | None,
    workdir: Path,
    outputs: Iterable[str] = (),
    failpoint: Callable[[], None] | None = None,
    cache: ResultCache | None = None,
    upstream: Mapping[str, list[OutputRef]] | None = None,
) -> bool:
    """Upload outputs (if the module succeeded and declared any), then the result.

    ``upstream`` is the manifest of outputs shipped by the modules upstream (see
    `ResultCache.upstream_outputs`); the result carries it on. Returns False when another
    attempt's result was already there (this one is discarded).
    """
    outcome = record.outcome or Outcome.CANCELLED
    shipped: list[dict[str, object]] = []
    patterns = list(outputs)
    if patterns and outcome in (Outcome.SUCCEEDED, Outcome.IGNORED_FAILURE):
        from .archive import pack_outputs

        with tempfile.TemporaryDirectory(prefix="ciflow-out-") as tmp:
            archive = Path(tmp) / "outputs.tar.zst"
            info = pack_outputs(workdir, patterns, archive)
            key = keys.outputs(record.name, attempt)
            store.create_from_file(key, archive, sole=True)  # only the attempt's holder writes
            shipped.append({"key": key, "sha256": info.sha256, "size": info.size})
    if failpoint is not None:
        failpoint()
    payload = record.result if record.result is not None else b""  # empty: no result
    header = ResultHeader(
        module=record.name,
        attempt=attempt,
        worker=worker,
        slot=slot,
        outcome=outcome.value,
        started=record.start if record.start is not None else 0.0,
        finished=record.end if record.end is not None else time.time(),
        duration=record.duration,
        error=record.error,
        skip_reason=record.skip_reason,
        payload_sha256="",
        payload_size=0,
        outputs=shipped,  # type: ignore[arg-type]
        upstream_outputs=dict(upstream or {}),
    )
    written = store.create(keys.result(record.name), encode_result(header, payload))
    if written and cache is not None:
        cache.remember(record.name, header, payload)
    return written


class ResultCache:
    """Which modules have a result, and the results read so far (they never change).

    `refresh` only notes which results exist (from a listing); a result is downloaded the first
    time its outcome or value is asked for, so a worker reads only what it acts on.
    """

    def __init__(self, store: Store, keys: RunKeys) -> None:
        self.store = store
        self.keys = keys
        self.present: set[str] = set()
        self.headers: dict[str, ResultHeader] = {}
        self.payloads: dict[str, bytes] = {}

    def refresh(self, listed: list[str] | None = None) -> list[str]:
        """Note results that appeared since the last call; return their module names.

        ``listed`` is a fresh listing of the results prefix, if the caller has one.
        """
        new = []
        prefix = self.keys.results
        for key in self.store.list(prefix) if listed is None else listed:
            module = key[len(prefix) :]
            if module and "/" not in module and module not in self.present:
                self.present.add(module)
                new.append(module)
        return new

    def load(self, module: str) -> ResultHeader:
        """The header of ``module``'s result, downloading the record the first time."""
        header = self.headers.get(module)
        if header is not None:
            return header
        key = self.keys.result(module)
        data = self.store.get(key)
        if data is None:
            raise StoreError(f"result {key} was listed but cannot be read; check the store")
        header, payload = decode_result(data, key=key)
        self.remember(module, header, payload)
        return header

    def remember(self, module: str, header: ResultHeader, payload: bytes) -> None:
        """Keep a result this process wrote or read, so it is never downloaded again."""
        self.present.add(module)
        self.headers[module] = header
        self.payloads[module] = payload

    def payload(self, module: str) -> bytes:
        self.load(module)
        return self.payloads[module]

    def outcome(self, module: str) -> Outcome | None:
        if module not in self.present:
            return None
        return Outcome(self.load(module).outcome)

    def upstream_outputs(self, deps: Iterable[str]) -> dict[str, list[OutputRef]]:
        """The shipped outputs of ``deps`` and of everything upstream of them, by module.

        Read from the direct dependencies' results alone: each result carries its upstream's.
        """
        manifest: dict[str, list[OutputRef]] = {}
        for dep in deps:
            if dep not in self.present:
                continue
            header = self.load(dep)
            manifest.update(header.upstream_outputs)
            if header.outputs:
                manifest[dep] = list(header.outputs)
        return manifest

    def restore_outputs(
        self, module: str, workdir: Path, refs: Iterable[OutputRef] | None = None
    ) -> int:
        """Download and unpack ``module``'s shipped outputs (or ``refs``) into ``workdir``.

        Returns the number of files restored.
        """
        from .archive import unpack_outputs

        items = self.load(module).outputs if refs is None else list(refs)
        count = 0
        for item in items:
            with tempfile.TemporaryDirectory(prefix="ciflow-in-") as tmp:
                archive = Path(tmp) / "outputs.tar.zst"
                if not self.store.get_to_file(item.key, archive):
                    raise StoreError(
                        f"outputs {item.key} of module {module!r} are missing from the store; "
                        "rerun the module"
                    )
                count += len(unpack_outputs(archive, workdir, expected_sha256=item.sha256))
        return count


def read_run(store: Store, keys: RunKeys, order: Iterable[str]) -> RunResult:
    """The run as the store has it: one record per module of ``order`` (missing = no result)."""
    cache = ResultCache(store, keys)
    cache.refresh()
    records = []
    for name in order:
        if name not in cache.present:
            records.append(ModuleRecord(name))
            continue
        header = cache.load(name)
        records.append(
            ModuleRecord(
                name=name,
                outcome=Outcome(header.outcome),
                attempts=header.attempt,
                start=header.started or None,
                end=header.finished,
                duration=header.duration,
                error=header.error,
                skip_reason=header.skip_reason,
                result=cache.payloads[name] or None,
                worker=header.worker,
                slot=header.slot,
            )
        )
    started = [r.start for r in records if r.start is not None]
    ended = [r.end for r in records if r.end is not None]
    return RunResult(
        keys.run_id,
        records,
        min(started) if started else time.time(),
        max(ended) if ended else time.time(),
    )
