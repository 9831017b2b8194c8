"""The result cache as a run uses it: look a module up before it runs, store it after.

`ModuleCache` is what the local engine and the distributed worker hold: `lookup` gives the
attempt hook (a hit ends the attempt ``cached``, its outputs restored and its result validated
through the annotation), `save` stores a successful module, `product` gives the digests a
finished module hands its dependents' keys (early cut-off). Trouble with the cache is a warning
and a miss, never a failure (docs/architecture.md, "The result cache").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import CiflowError, ResultTypeError
from ..execution.attempt import AttemptResult, Ending
from ..execution.masking import MASKER
from ..model.outcome import ModuleRecord
from ..model.pipeline import Pipeline
from ..stores.base import Store, StoreError
from .digest import digest_bytes, outputs_digest
from .entries import PREFIX, Entry, EntryStore
from .key import UNKNOWN, KeyParts, Product, key_parts, what_changed
from .prune import touch

__all__ = ["ModuleCache", "Probe"]

Warn = Callable[[str], None]


@dataclass
class Probe:
    """One module's lookup: its key parts, the entry found (a hit) or why it missed."""

    parts: KeyParts
    entry: Entry | None = None
    miss: str | None = None
    #: the entry under this key could not be used: the next store replaces it
    broken: bool = False

    @property
    def verdict(self) -> str:
        return "hit" if self.entry is not None else f"miss: {self.miss}"


class ModuleCache:
    """The cache of one run: which modules it covers, their probes, the time hits saved."""

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        *,
        workdir: Path,
        environ: Mapping[str, str] | None = None,
        rebuild: Collection[str] = (),
        warn: Warn = lambda line: None,
    ) -> None:
        self.entries = EntryStore(store)
        self.pipeline = pipeline
        self.workdir = workdir
        self.environ = os.environ if environ is None else environ
        self.rebuild = frozenset(rebuild)
        self.warn = warn
        self._lock = threading.Lock()
        self.probes: dict[str, Probe] = {}
        mods = pipeline.modules
        self._feeds = {d.name for m in mods.values() if m.cache for d in m.depends_on}

    @property
    def url(self) -> str:
        return self.entries.store.url

    def applies(self, name: str) -> bool:
        """Whether ``name`` is looked up and stored (``cache=True``)."""
        return self.pipeline.modules[name].cache

    def feeds(self, name: str) -> bool:
        """Whether a cached module depends on ``name`` (so its product is needed)."""
        return name in self._feeds

    def parts(self, name: str, deps: Mapping[str, Product]) -> KeyParts:
        mod = self.pipeline.modules[name]
        params = self.pipeline.bindings[name].dep_params
        return key_parts(mod, params, root=self.pipeline.folder, environ=self.environ, deps=deps)

    def probe(self, name: str, deps: Mapping[str, Product]) -> Probe:
        """Look ``name`` up with its dependencies' products ``deps``; never raises."""
        try:
            parts = self.parts(name, deps)
        except CiflowError as exc:
            self.warn(f"cache: cannot compute the key of {name} ({exc}); running it")
            return Probe(KeyParts(name, "", "", ""), miss=f"no key: {exc}")
        probe = Probe(parts)
        unknown = [d for d, product in parts.deps.items() if UNKNOWN in product]
        if unknown:  # looked up with a guess, a hit could be wrong: neither look up nor store
            probe.parts = KeyParts(name, "", "", "")
            probe.miss = f"dependency {unknown[0]}'s outputs digest is not known"
        elif name in self.rebuild:
            probe.miss = "rebuild asked for (--rebuild)"
        else:
            self._find(name, probe)
        with self._lock:
            self.probes[name] = probe
        return probe

    def _find(self, name: str, probe: Probe) -> None:
        key = probe.parts.key()
        try:
            entry = self.entries.read(name, key)
            if entry is None:
                probe.miss = what_changed(self.entries.last_parts(name), probe.parts)
                return
            self._restore(entry)
            touch(self.entries.store, f"{PREFIX}/{name}/data/{key}")
        except (StoreError, ValueError, OSError, CiflowError) as exc:
            self.warn(f"cache: the entry of {name} cannot be used ({exc}); running it")
            probe.miss, probe.broken = "its entry cannot be used", True
            return
        probe.entry = entry

    def _restore(self, entry: Entry) -> None:
        """Put the entry's outputs into the workspace, unless they are there already."""
        from ..distributed.restore import unpack_outputs

        patterns = list(self.pipeline.modules[entry.module].outputs)
        if not entry.outputs or outputs_digest(self.workdir, patterns) == entry.outputs_digest:
            return
        for ref in entry.outputs:
            with self.entries.temp_archive() as tmp:
                archive = Path(tmp) / "outputs.tar.zst"
                if not self.entries.fetch_outputs(ref, archive, patterns):
                    raise StoreError(f"the outputs {ref.key} of the entry are gone")
                unpack_outputs(archive, self.workdir, expected_sha256=ref.sha256, allowed=patterns)

    def lookup(self, name: str, deps: Mapping[str, Product]) -> Callable[[], AttemptResult | None]:
        """The attempt hook for ``name``: a ``cached`` ending on a hit, None on a miss."""

        def hook() -> AttemptResult | None:
            probe = self.probe(name, deps)
            if probe.entry is None:
                return None
            result = self.pipeline.bindings[name].result
            try:
                value = result.decode(probe.entry.data, name)
            except ResultTypeError as exc:
                self.warn(f"cache: the entry of {name} no longer fits its annotation ({exc})")
                probe.entry, probe.miss = None, "its entry no longer fits the annotation"
                probe.broken = True
                return None
            return AttemptResult(Ending.CACHED, value, probe.entry.data)

        return hook

    def hook(
        self, name: str, attempt: int, products: Mapping[str, Product]
    ) -> Callable[[], AttemptResult | None] | None:
        """The attempt hook for attempt ``attempt`` of ``name``; None when it is not looked up."""
        if attempt != 1 or not self.applies(name):
            return None
        return self.lookup(name, products)

    def finished(
        self,
        name: str,
        result: AttemptResult,
        duration: float,
        record: ModuleRecord,
        products: dict[str, Product],
    ) -> None:
        """After ``name`` succeeded or hit: store it, note the verdict, add its product."""
        digest = None
        probe = self.probes.get(name)
        if result.ending is Ending.CACHED and probe is not None and probe.entry is not None:
            record.saved, digest = probe.entry.duration, probe.entry.outputs_digest
        elif self.applies(name):
            digest = self.save(name, result.data, duration)
        if self.applies(name) and probe is not None:
            record.cache = probe.verdict
        if self.feeds(name):
            products[name] = self.product(name, result.data, digest)
            digest = products[name][1]
        record.outputs_digest = digest

    def save(self, name: str, data: bytes | None, duration: float) -> str | None:
        """Store a success of ``name`` (after `probe`); returns its outputs digest."""
        probe = self.probes.get(name)
        if probe is None or not probe.parts.code:
            return None
        mod = self.pipeline.modules[name]
        payload = b"null" if data is None else data
        if MASKER.mask(payload.decode("utf-8", "replace")) != payload.decode("utf-8", "replace"):
            self.warn(f"cache: {name}'s result holds a registered secret; not stored")
            return None
        try:
            digest = outputs_digest(self.workdir, mod.outputs) if mod.outputs else "-"
            with self.entries.temp_archive() as tmp:
                archive = None
                if mod.outputs:
                    from ..distributed.archive import pack_outputs

                    dest = Path(tmp) / "o.tar.zst"
                    archive = pack_outputs(self.workdir, mod.outputs, dest, durable=False)
                if probe.broken:
                    self.entries.drop(name, probe.parts.key())
                self.entries.write(probe.parts, payload, duration, archive, digest, mod.outputs)
        except (CiflowError, OSError) as exc:
            self.warn(f"cache: cannot store the entry of {name} ({exc}); the run goes on")
            return None
        return digest

    def product(self, name: str, data: bytes | None, digest: str | None = None) -> Product:
        """What ``name`` hands its dependents' keys: its result's and outputs' digests."""
        if digest is None:
            mod = self.pipeline.modules[name]
            digest = "-"
            if mod.outputs:
                try:
                    digest = outputs_digest(self.workdir, mod.outputs)
                except CiflowError as exc:
                    self.warn(f"cache: cannot read the outputs of {name} ({exc})")
                    digest = "unreadable"
        return (digest_bytes(data), digest)

    def saved(self) -> float:
        """Seconds the hits of this run saved (the durations their entries recorded)."""
        return sum(p.entry.duration for p in self.probes.values() if p.entry is not None)
