"""The result store: module results and shipped outputs of a run, read and written.

A module's result lives at ``results/<module>`` and is created once: the first result written
wins, a late one from an older attempt is discarded. Declared outputs are uploaded first (as a
zstd tar under ``outputs/<module>/<attempt>``), so a readable result implies readable outputs.
A result whose outcome does not count as success is preceded by a marker
(``results/<module>@unsuccessful``): a listing alone tells a dependent that every dependency
succeeded, and only a marked result is downloaded to learn why it did not.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from ..execution.masking import MASKER
from ..model.outcome import ModuleRecord, Outcome, RunResult
from ..stores.base import Store, StoreError, StoreUnavailable
from .blob import BlobError, CorruptBlob, OutputRef, ResultHeader, decode_result, encode_result
from .keys import RunKeys
from .messages import Marker, encode

__all__ = ["ResultCache", "mask_record", "publish_result", "read_run"]


def publish_result(
    store: Store,
    keys: RunKeys,
    record: ModuleRecord,
    *,
    attempt: int,
    worker: str,
    slot: int | None,
    workdir: Path,
    outputs: Sequence[str] = (),
    failpoint: Callable[[], None] | None = None,
    cache: ResultCache | None = None,
    warn: Callable[[str], None] | None = None,
) -> bool:
    """Upload outputs (if the module succeeded and declared any), then the result.

    Outputs that cannot be packed (a link leaving the workspace, an unreadable file) fail the
    module: the record becomes ``failed`` with the reason. Every registered secret is masked
    in the record first (`mask_record`), so the store never holds one. Returns False when
    another attempt's result was already there (this one is discarded).
    """
    if mask_record(record) and warn is not None:
        warn(
            f"the result of {record.name} contains a registered secret: it is stored masked "
            "(***), and dependents on other runners get the masked value; pass secrets to "
            "dependents through the environment (ciflow.secret) instead"
        )
    outcome = record.outcome or Outcome.CANCELLED
    shipped: list[OutputRef] = []
    if outputs and outcome in (Outcome.SUCCEEDED, Outcome.IGNORED_FAILURE):
        shipped = _ship_outputs(store, keys, record, attempt, workdir, outputs)
        outcome = record.outcome or Outcome.CANCELLED
    if failpoint is not None:
        failpoint()
    if not outcome.ok:
        mark = Marker(module=record.name, attempt=attempt, outcome=outcome.value)
        store.create(keys.marker(record.name), encode(mark))  # first marker is enough
    payload = record.result if record.result is not None and outcome.ok else b""
    header = ResultHeader(
        module=record.name,
        attempt=max(1, record.attempts or attempt),
        worker=worker,
        slot=slot,
        outcome=outcome.value,
        started=record.start if record.start is not None else 0.0,
        finished=record.end if record.end is not None else time.time(),
        duration=record.duration,
        error=record.error,
        skip_reason=record.skip_reason,
        outputs=shipped,
        outputs_digest=record.outputs_digest,
        cache=record.cache,
        saved=record.saved,
        run_attempt=record.run_attempt,
    )
    written = store.create(keys.result(record.name), encode_result(header, payload))
    if written and cache is not None:
        cache.remember(record.name, header, payload)
    return written


def mask_record(record: ModuleRecord) -> bool:
    """Mask registered secrets in ``record`` in place; True if its result value held one.

    Errors and skip reasons are masked silently; a result whose JSON holds a secret is
    re-encoded with every string masked (the caller warns: the value dependents get changes).
    """
    if record.error:
        record.error = MASKER.mask(record.error)
    if record.skip_reason:
        record.skip_reason = MASKER.mask(record.skip_reason)
    if not record.result:
        return False
    value = json.loads(record.result)  # the parsed value: in JSON text a secret may be escaped
    masked = MASKER.mask_data(value)
    if masked == value:
        return False
    record.result = json.dumps(masked).encode()
    return True


def _ship_outputs(
    store: Store,
    keys: RunKeys,
    record: ModuleRecord,
    attempt: int,
    workdir: Path,
    patterns: Sequence[str],
) -> list[OutputRef]:
    from .archive import ArchiveError, pack_outputs

    with tempfile.TemporaryDirectory(prefix="ciflow-out-") as tmp:
        archive = Path(tmp) / "outputs.tar.zst"
        try:
            info = pack_outputs(workdir, list(patterns), archive)
        except ArchiveError as exc:
            record.outcome, record.error, record.result = Outcome.FAILED, str(exc), None
            return []
        key = keys.outputs(record.name, attempt)
        store.create_from_file(key, archive, sole=True)  # only the attempt's holder writes
    return [OutputRef(key=key, sha256=info.sha256, size=info.size, unpacked=info.file_bytes)]


class ResultCache:
    """Which modules have a result, which are marked unsuccessful, and the results read.

    `note` takes a listing; a result is downloaded the first time its header or value is
    asked for, so a worker reads only what it acts on. Safe to use from several threads.
    """

    def __init__(self, store: Store, keys: RunKeys) -> None:
        self.store = store
        self.keys = keys
        self.present: set[str] = set()
        self.marked: set[str] = set()
        self.headers: dict[str, ResultHeader] = {}
        self.payloads: dict[str, bytes] = {}
        #: carried from an earlier CI attempt: module -> (store, header key -> key in it)
        self.carried: dict[str, tuple[Store, Mapping[str, str]]] = {}
        self._lock = threading.Lock()

    def carry(
        self, headers: Mapping[str, ResultHeader], payloads: Mapping[str, bytes],
        store: Store, outputs: Mapping[str, str],
    ) -> None:  # fmt: skip
        """Know results carried from an earlier attempt; their outputs are read from ``store``."""
        for name, header in headers.items():
            self.remember(name, header, payloads[name])
            self.carried[name] = (store, outputs)

    def note(self, listed: Iterable[str]) -> list[str]:
        """Note results and markers in ``listed`` keys; return the modules new with a result."""
        new = []
        parse = self.keys.parse
        for key in listed:
            found = parse(key)
            if found is None:
                continue
            if found.kind == "result" and found.module not in self.present:
                self.present.add(found.module)
                new.append(found.module)
            elif found.kind == "marker":
                self.marked.add(found.module)
        return new

    def refresh(self) -> list[str]:
        """List the results prefix and `note` it."""
        return self.note(self.store.list(self.keys.results))

    def load(self, module: str) -> ResultHeader:
        """The header of ``module``'s result, downloading the record the first time.

        A record that is unreadable, names another module or points at outputs outside this
        run and module is a `BlobError`.
        """
        header = self.headers.get(module)
        if header is not None:
            return header
        key = self.keys.result(module)
        data = self.store.get(key)
        if data is None:
            raise StoreError(f"result {key} was listed but cannot be read; check the store")
        header, payload = decode_result(data, key=key)
        self._check(key, module, header)
        self.remember(module, header, payload)
        return header

    def _check(self, key: str, module: str, header: ResultHeader) -> None:
        if header.module != module:
            raise BlobError(
                f"result {key} is the result of module {header.module!r}, not {module!r}: "
                "a record was planted or copied; delete it and rerun the module"
            )
        own = f"{self.keys.outputs_prefix}{module}/"
        for ref in header.outputs:
            if not ref.key.startswith(own):
                raise BlobError(
                    f"result {key} points at outputs {ref.key!r} outside {own}: refusing to "
                    "restore them; delete the record and rerun the module"
                )

    def remember(self, module: str, header: ResultHeader, payload: bytes) -> None:
        """Keep a result this process wrote or read, so it is never downloaded again."""
        with self._lock:
            self.present.add(module)
            self.headers[module] = header
            self.payloads[module] = payload
            if not Outcome(header.outcome).ok:
                self.marked.add(module)

    def payload(self, module: str) -> bytes:
        self.load(module)
        return self.payloads[module]

    def outcome(self, module: str) -> Outcome | None:
        """The module's outcome; None without a result. Downloads only marked results."""
        if module not in self.present:
            return None
        if module not in self.marked and module not in self.headers:
            return Outcome.SUCCEEDED  # counts as success: no marker was written before it
        return Outcome(self.load(module).outcome)

    def restore_outputs(self, module: str, workdir: Path, patterns: Sequence[str]) -> int:
        """Download and unpack ``module``'s shipped outputs into ``workdir``.

        Only paths matching the producer's declared ``patterns`` are restored, and no more
        bytes than its result recorded. Returns the number of files restored.
        """
        from .restore import unpack_outputs

        count = 0
        store, moved = self.carried.get(module, (self.store, {}))
        for item in self.load(module).outputs:
            with tempfile.TemporaryDirectory(prefix="ciflow-in-") as tmp:
                archive = Path(tmp) / "outputs.tar.zst"
                if not store.get_to_file(moved.get(item.key, item.key), archive):
                    raise StoreError(
                        f"outputs {item.key} of module {module!r} are missing from the store; "
                        "rerun the module"
                    )
                restored = unpack_outputs(
                    archive, workdir, expected_sha256=item.sha256, allowed=list(patterns),
                    max_bytes=item.unpacked or None,
                )  # fmt: skip
                count += len(restored)
        return count


def read_run(
    store: Store,
    keys: RunKeys,
    order: Iterable[str],
    *,
    results: ResultCache | None = None,
    carried: Mapping[str, tuple[ResultHeader, bytes, int]] | None = None,
) -> RunResult:
    """The run as the store has it: one record per module of ``order``.

    A module without a result has no outcome (``missing``). A result record that cannot be
    used (corrupted, planted, of a newer ciflow, listed but gone) fails its module with the
    reason and a line in the result's ``warnings``; the rest of the run is still read. Modules
    whose result broke its annotation are named by their workers' deregistrations (``done``).
    ``carried``: results earlier CI attempts finished (header, payload, attempt), for modules
    this attempt did not run. ``results``: the cache to read through (the caller keeps it).
    """
    cache = results if results is not None else ResultCache(store, keys)
    cache.refresh()
    warnings: list[str] = []
    broken = _definition_errors(store, keys, warnings)
    records = []
    for name in order:
        if name not in cache.present:
            old = (carried or {}).get(name)
            if old is None:
                records.append(ModuleRecord(name))
            else:
                records.append(_record(name, old[0], old[1], False, old[2]))
            continue
        try:
            header = cache.load(name)
            outcome = Outcome(header.outcome)
        except StoreUnavailable:
            raise
        except (StoreError, ValueError) as exc:  # BlobError is a StoreError
            reason = _unusable(exc)
            warnings.append(f"module {name!r}: {reason}")
            records.append(ModuleRecord(name, outcome=Outcome.FAILED, error=reason))
            continue
        bad_definition = name in broken and not outcome.ok
        records.append(
            _record(name, header, cache.payloads[name], bad_definition, header.run_attempt)
        )
    started = [r.start for r in records if r.start is not None]
    ended = [r.end for r in records if r.end is not None]
    return RunResult(
        keys.run_id,
        records,
        min(started) if started else time.time(),
        max(ended) if ended else time.time(),
        warnings=warnings,
    )


def _record(
    name: str, header: ResultHeader, payload: bytes, bad_definition: bool, attempt: int | None
) -> ModuleRecord:
    return ModuleRecord(
        name=name,
        outcome=Outcome(header.outcome),
        attempts=header.attempt,
        start=header.started or None,
        end=header.finished,
        duration=header.duration,
        error=header.error,
        skip_reason=header.skip_reason,
        cache=header.cache,
        saved=header.saved,
        outputs_digest=header.outputs_digest,
        result=payload or None,
        worker=header.worker,
        slot=header.slot,
        definition_error=bad_definition,
        run_attempt=attempt,
    )


def _unusable(exc: Exception) -> str:
    """Why a result record cannot be used, as a module's failure reason."""
    if isinstance(exc, CorruptBlob):
        return f"its result record is corrupted: {exc.reason}; delete {exc.key} and rerun it"
    if isinstance(exc, ValueError):
        return f"its result record names an unknown outcome ({exc}); upgrade ciflow"
    return f"its result record cannot be used: {exc}"


def _definition_errors(store: Store, keys: RunKeys, warnings: list[str]) -> set[str]:
    """Modules whose workers deregistered saying the module's result broke its annotation."""
    from .liveness import finished_workers

    try:
        done = finished_workers(store, keys)
    except StoreUnavailable:
        raise
    except StoreError as exc:
        warnings.append(f"a worker's deregistration cannot be read: {exc}")
        return set()
    return {name for record in done.values() for name in record.definition_errors}
