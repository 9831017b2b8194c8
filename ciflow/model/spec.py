"""Per-field digests of a module's spec, so a worker can tell which field changed since the plan.

The plan job records `spec_digest` of every module (`planning.plan.PlanInputs.specs`); a worker
whose pipeline file gives another digest refuses to start and names the module and the field
(docs/architecture.md, "Re-runs"). The function's code is not part of
it: a changed body is the result cache's business, not a different plan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

from .module import Module

__all__ = ["FIELDS", "changed_field", "spec_digest", "spec_digests"]


def _callable_name(fn: object) -> str | None:
    """A name of a skip condition that is the same in every process: a function's qualified
    name (pipeline files import under a generated module name), a `Condition`'s description."""
    if fn is None:
        return None
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else f"{type(fn).__qualname__}:{fn!r}"


#: the spec fields, in the order their digests are joined (append only: the order is the format)
FIELDS: tuple[tuple[str, Callable[[Module], object]], ...] = (
    ("depends_on", lambda m: [list(d) for d in m.depends_on]),
    ("requires", lambda m: [list(m.requires.os), list(m.requires.arch),
                            list(m.requires.tools), list(m.requires.tags)]),
    ("not_in_parallel", lambda m: [m.alone, list(m.not_in_parallel)]),
    ("parallel_limit", lambda m: [m.parallel_limit.name, m.parallel_limit.count]
     if m.parallel_limit else None),
    ("timeout", lambda m: m.timeout),
    ("retries", lambda m: m.retries),
    ("retry_delay", lambda m: m.retry_delay),
    ("skip_if", lambda m: _callable_name(m.skip_if)),
    ("ignore_failure", lambda m: m.ignore_failure),
    ("always_run", lambda m: m.always_run),
    ("category", lambda m: m.category),
    ("tags", lambda m: list(m.tags)),
    ("inputs", lambda m: list(m.inputs)),
    ("outputs", lambda m: list(m.outputs)),
    ("cache", lambda m: m.cache),
    ("env", lambda m: list(m.env)),
    ("affinity", lambda m: m.affinity),
    ("cost", lambda m: m.cost),
)  # fmt: skip

_WIDTH = 6  # hex digits per field: enough to notice an edit, small in a plan of 1,000 modules


def _field_digest(value: object) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:_WIDTH]


def spec_digest(module: Module) -> str:
    """The module's spec as ``-``-joined short digests, one per field of `FIELDS`."""
    return "-".join(_field_digest(get(module)) for _, get in FIELDS)


def changed_field(planned: str, module: Module) -> str | None:
    """The first field whose digest differs from ``planned`` (None: the same spec).

    A digest of another shape (a newer ciflow's plan with more fields) compares the fields both
    know.
    """
    ours = spec_digest(module).split("-")
    for (name, _), theirs, mine in zip(FIELDS, planned.split("-"), ours, strict=False):
        if theirs != mine:
            return name
    return None


def spec_digests(modules: Mapping[str, Module]) -> dict[str, str]:
    """`spec_digest` of each module, by name."""
    return {name: spec_digest(mod) for name, mod in modules.items()}
