"""Re-runs: a later CI attempt of a run resumes it instead of starting over.

GitHub's "Re-run failed jobs" starts the failed jobs again as attempt N+1 and keeps the plan
job's outputs, so the run id (the plan's) stays. The summary job of each attempt writes a
**carry** record (`write_carry`): every module that did not fail, with its result record and
the attempt that produced it. Workers of the next attempt read it (`read_carry`), run only the
modules that failed, were cancelled or never finished and everything that depends on them, and
keep their own records under ``runs/<id>/attempt-<n>/`` (`RunKeys.resumed`). On `github://`
a job sees only its own attempt's artifacts, so the plan and the carry record live in the
repository's Actions cache (`carry_store`) and outputs that re-run modules need are copied
there. See docs/architecture.md, "Re-runs".
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..model.outcome import Outcome
from ..model.pipeline import Pipeline
from ..planning.plan import DistributedExecutionPlan
from ..stores.base import Store, StoreError, StoreUnavailable
from .blob import BlobError, ResultHeader, decode_result, encode_result
from .keys import RunKeys

__all__ = [
    "CARRY_SCHEMA",
    "Carried",
    "AttemptView",
    "Resumed",
    "attempt_view",
    "record_attempt",
    "resume_run",
    "carry_store",
    "find_plan",
    "planned_run",
    "read_carry",
    "rerun_set",
    "write_carry",
]

#: the carry record's format; a newer one is read as "nothing carried" with a warning
CARRY_SCHEMA = 1


@dataclass
class Carried:
    """What earlier attempts finished: per module its result, the attempt that produced it and
    where its outputs are (``outputs``: key in a header -> key in ``store``)."""

    attempt: int
    headers: dict[str, ResultHeader] = field(default_factory=dict)
    payloads: dict[str, bytes] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    store: Store | None = None

    def outcomes(self) -> dict[str, Outcome]:
        return {name: Outcome(h.outcome) for name, h in self.headers.items()}

    def keep(self, names: Iterable[str]) -> None:
        """Forget every module but ``names`` (the ones that will not run again)."""
        wanted = set(names)
        for name in [n for n in self.headers if n not in wanted]:
            del self.headers[name], self.payloads[name]
            self.produced.pop(name, None)


@dataclass(frozen=True)
class Resumed:
    """A worker's view of a resumed run: the plan, what is carried, its attempt's keys."""

    plan: DistributedExecutionPlan
    carried: Carried | None
    keys: RunKeys
    again: list[str]


def resume_run(
    store: Store,
    keys: RunKeys,
    attempt: int,
    pipeline: Pipeline,
    parse_plan: Callable[[bytes, str], DistributedExecutionPlan],
    say: Callable[[str], None],
) -> Resumed | None:
    """The resumed run for a worker of CI attempt ``attempt``; None when the plan is not
    older than this attempt (or not there yet: the worker waits for it as usual)."""
    carry = carry_store(store)
    data = find_plan(store, carry, keys)
    if data is None:
        return None
    plan = parse_plan(data, keys.plan)
    if plan.attempt >= attempt:
        return None
    carried = read_carry(carry, keys, attempt, say)
    order = list(plan.inputs.modules)
    deps = {n: [d.name for d in pipeline.modules[n].depends_on] for n in order}
    again = rerun_set(order, deps, carried.headers if carried is not None else ())
    if carried is None:
        say(
            f"attempt {attempt} resumes run {keys.run_id} (planned in attempt {plan.attempt}) "
            "but no earlier attempt's summary recorded what finished (the summary job writes "
            "it, `if: always()`): every module runs again"
        )
    else:
        carried.keep(set(order) - set(again))
        shown = ", ".join(again[:8]) + (", ..." if len(again) > 8 else "")
        say(
            f"attempt {attempt} resumes run {keys.run_id}: {len(carried.headers)} module(s) "
            f"finished in earlier attempts, {len(again)} run again"
            + (f" ({shown})" if again else "")
        )
    return Resumed(plan, carried, keys.resumed(attempt), again)


def carry_store(store: Store) -> Store:
    """Where records that must outlive a CI attempt go: the run's store itself, except on
    ``github://`` (each attempt sees only its own artifacts): the same namespace of the
    repository's Actions cache."""
    from ..stores.github.artifacts import GitHubArtifactStore

    if isinstance(store, GitHubArtifactStore):
        from ..stores.registry import open_store

        return open_store(f"github-cache://{store.namespace}")
    return store


def find_plan(store: Store, carry: Store, keys: RunKeys) -> bytes | None:
    """The stored plan of the run: in its store, else (a later attempt on github://) carried."""
    data = store.get(keys.plan)
    if data is None and carry is not store:
        data = carry.get(keys.plan)
    return data


def planned_run(store: Store, run_id: str, attempt: int | None) -> str:
    """The run a job of CI attempt ``attempt`` belongs to, given the default ``<run>-<attempt>``.

    "Re-run failed jobs" does not re-run the plan job: its run is ``<run>-<k>`` for an earlier
    ``k``. The newest attempt with a plan wins; with none, ``run_id`` (the plan may come later).
    """
    suffix = f"-{attempt}"
    if attempt is None or attempt < 2 or not run_id.endswith(suffix):
        return run_id
    base = run_id[: -len(suffix)]
    carry = carry_store(store)
    for k in range(attempt, 0, -1):
        if find_plan(store, carry, RunKeys(f"{base}-{k}")) is not None:
            return f"{base}-{k}"
    return run_id


def rerun_set(
    order: Sequence[str], depends_on: Mapping[str, Sequence[str]], done: Iterable[str]
) -> list[str]:
    """The modules of ``order`` to run again: every one not in ``done`` and every one that
    depends on such a module (also through optional dependencies), in ``order``."""
    finished = set(done)
    again = {n for n in order if n not in finished}
    for name in order:  # dependency order: a dependent comes after what it depends on
        if name not in again and any(d in again for d in depends_on.get(name, ())):
            again.add(name)
    return [n for n in order if n in again]


def read_carry(
    carry: Store, keys: RunKeys, before: int, warn: Callable[[str], None]
) -> Carried | None:
    """The newest carry record of an attempt before ``before``, or None if none was written.

    A record that cannot be used is a warning and counts as nothing carried (everything runs
    again); a module whose record inside it is corrupted or names another module runs again.
    """
    for attempt in range(before - 1, 0, -1):
        key = keys.carry(attempt)
        try:
            data = carry.get(key)
        except StoreUnavailable:
            raise
        except StoreError as exc:
            warn(f"warning: the carry record {key} cannot be read ({exc}): every module runs")
            return None
        if data is not None:
            return _parse_carry(data, key, keys, carry, attempt, warn)
    return None


def _parse_carry(
    data: bytes, key: str, keys: RunKeys, carry: Store, attempt: int, warn: Callable[[str], None]
) -> Carried | None:
    import pyzstd

    try:
        doc = json.loads(pyzstd.decompress(data))
        if not isinstance(doc, dict) or not isinstance(doc.get("modules"), dict):
            raise ValueError("not a carry record")
        if int(doc.get("schema_version", 0)) > CARRY_SCHEMA:
            raise ValueError(f"carry schema {doc['schema_version']} is newer than this ciflow's")
        if doc.get("run_id") != keys.run_id:
            raise ValueError(f"it belongs to run {doc.get('run_id')!r}")
    except (ValueError, TypeError, pyzstd.ZstdError) as exc:
        warn(f"warning: the carry record {key} cannot be used ({exc}): every module runs")
        return None
    out = Carried(attempt, store=carry)
    for name, item in doc["modules"].items():
        try:
            record = base64.b64decode(item["record"], validate=True)
            header, payload = decode_result(record, key=f"{key}#{name}")
            if header.module != name:
                raise BlobError(f"{key}#{name} is the result of module {header.module!r}")
            produced = int(item["attempt"])
        except (BlobError, KeyError, TypeError, ValueError) as exc:
            warn(f"warning: module {name!r} runs again: its carried result cannot be used ({exc})")
            continue
        out.headers[name], out.payloads[name], out.produced[name] = header, payload, produced
    own = (keys.run_root,)
    for src, dst in dict(doc.get("outputs") or {}).items():
        if isinstance(src, str) and isinstance(dst, str) and dst.startswith(own):
            out.outputs[src] = dst
    return out


def _encode_carry(
    keys: RunKeys, attempt: int, modules: dict[str, object], outputs: dict[str, str]
) -> bytes:
    import pyzstd

    doc = {
        "schema_version": CARRY_SCHEMA, "run_id": keys.run_id, "attempt": attempt,
        "modules": modules, "outputs": outputs,
    }  # fmt: skip
    return pyzstd.compress(json.dumps(doc, sort_keys=True).encode(), 3)


def write_carry(
    store: Store,
    carry: Store,
    keys: RunKeys,
    attempt: int,
    plan: DistributedExecutionPlan,
    finished: Mapping[str, tuple[ResultHeader, bytes, int]],
    carried: Carried | None,
    warn: Callable[[str], None],
) -> bool:
    """Write what attempts up to ``attempt`` finished (the summary job does, once per attempt).

    ``finished``: the modules that did not fail, with header, payload and producing attempt.
    Outputs that a module to run again needs are copied into ``carry`` when it is not the run's
    store; a module whose outputs cannot be copied runs again too. Returns False when a carry
    record of this attempt already exists.
    """
    order = list(plan.inputs.modules)
    deps = plan.inputs.depends_on
    mapping = dict(carried.outputs) if carried is not None else {}
    done = set(finished)
    while True:
        again = set(rerun_set(order, deps, done))
        lost = _carry_outputs(store, carry, keys, deps, finished, again, mapping, warn)
        if not lost:
            break
        done -= lost
    body: dict[str, object] = {
        name: {"attempt": produced, "record": base64.b64encode(encode_result(h, p)).decode()}
        for name, (h, p, produced) in finished.items()
        if name not in again
    }
    return carry.create(keys.carry(attempt), _encode_carry(keys, attempt, body, mapping), sole=True)


def _carry_outputs(
    store: Store,
    carry: Store,
    keys: RunKeys,
    deps: Mapping[str, Sequence[str]],
    finished: Mapping[str, tuple[ResultHeader, bytes, int]],
    again: set[str],
    mapping: dict[str, str],
    warn: Callable[[str], None],
) -> set[str]:
    """Copy the outputs modules in ``again`` need; return the producers whose copy failed."""
    if carry is store:
        return set()
    needed = {d for n in again for d in deps.get(n, ()) if d in finished}
    lost: set[str] = set()
    for name in sorted(needed - again):
        header, _, produced = finished[name]
        for index, ref in enumerate(header.outputs):
            if ref.key in mapping:
                continue
            try:
                mapping[ref.key] = _copy_outputs(
                    store, carry, ref.key, keys.carried(name, produced, index)
                )
            except StoreUnavailable:
                raise
            except StoreError as exc:
                warn(f"warning: module {name!r} runs again: its outputs cannot be carried ({exc})")
                lost.add(name)
                break
    return lost


def _copy_outputs(store: Store, carry: Store, src: str, dst: str) -> str:
    """Copy one outputs archive from the run's store into the carry store; returns ``dst``."""
    with tempfile.TemporaryDirectory(prefix="ciflow-carry-") as tmp:
        path = Path(tmp) / "outputs.tar.zst"
        if not store.get_to_file(src, path):
            raise StoreError(f"outputs {src} are missing from the store")
        carry.create_from_file(dst, path, sole=True)
    return dst


@dataclass(frozen=True)
class AttemptView:
    """How the summary of one CI attempt reads a run: the plan, the attempt's keys, what
    earlier attempts carried, and where carry records go."""

    plan: DistributedExecutionPlan | None
    keys: RunKeys
    carried: Carried | None
    carry: Store
    attempt: int | None

    def carried_records(self) -> dict[str, tuple[ResultHeader, bytes, int]] | None:
        c = self.carried
        if c is None:
            return None
        return {n: (h, c.payloads[n], c.produced.get(n, c.attempt)) for n, h in c.headers.items()}


def attempt_view(
    store: Store,
    keys: RunKeys,
    attempt: int | None,
    parse_plan: Callable[[bytes, str], DistributedExecutionPlan],
    warn: Callable[[str], None],
) -> AttemptView:
    """The run as CI attempt ``attempt`` (None: unknown, the plan's) sees it."""
    carry = carry_store(store)
    data = find_plan(store, carry, keys)
    plan = None if data is None else parse_plan(data, keys.plan)
    if plan is None or attempt is None or attempt <= plan.attempt:
        return AttemptView(plan, keys, None, carry, attempt)
    carried = read_carry(carry, keys, attempt, warn)
    return AttemptView(plan, keys.resumed(attempt), carried, carry, attempt)


def record_attempt(
    store: Store,
    view: AttemptView,
    headers: Mapping[str, ResultHeader],
    payloads: Mapping[str, bytes],
    warn: Callable[[str], None],
) -> None:
    """Write the carry record of ``view``'s attempt from what the summary read (``headers``
    and ``payloads`` of this attempt's results), so a re-run of failed jobs resumes the run."""
    plan = view.plan
    if plan is None:
        return
    attempt = view.attempt or plan.attempt
    finished: dict[str, tuple[ResultHeader, bytes, int]] = dict(view.carried_records() or {})
    for name in plan.inputs.modules:
        header = headers.get(name)
        if header is not None:
            finished.pop(name, None)
            if not Outcome(header.outcome).bad:
                finished[name] = (header, payloads.get(name, b""), header.run_attempt or attempt)
    try:
        write_carry(store, view.carry, view.keys, attempt, plan, finished, view.carried, warn)
    except StoreError as exc:
        warn(
            f"warning: what this attempt finished was not recorded for a re-run ({exc}); "
            "re-running failed jobs will run every module again"
        )
