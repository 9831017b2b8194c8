"""Per-field spec digests: which field of a module changed since the plan."""

from __future__ import annotations

import ciflow
from ciflow.model.module import Module
from ciflow.model.spec import FIELDS, changed_field, spec_digest


def build(ctx: ciflow.Context) -> int:
    return 1


def make(**spec: object) -> Module:
    return Module(build, name="build", **spec)  # type: ignore[arg-type]


def test_the_same_spec_has_the_same_digest_and_no_changed_field() -> None:
    a, b = make(retries=1, tags=["x"]), make(retries=1, tags=["x"])
    assert spec_digest(a) == spec_digest(b)
    assert changed_field(spec_digest(a), b) is None
    assert len(spec_digest(a).split("-")) == len(FIELDS)


def test_each_changed_field_is_named() -> None:
    base = spec_digest(make())
    assert changed_field(base, make(retries=2)) == "retries"
    assert changed_field(base, make(depends_on=["lint"])) == "depends_on"
    assert changed_field(base, make(timeout=5)) == "timeout"
    assert changed_field(base, make(requires=ciflow.Requires(os="linux"))) == "requires"
    assert changed_field(base, make(always_run=True)) == "always_run"


def test_a_body_change_is_not_a_spec_change() -> None:
    other = Module(lambda ctx: 2, name="build")
    assert changed_field(spec_digest(make()), other) is None


def test_a_digest_with_more_fields_compares_the_known_ones() -> None:
    planned = spec_digest(make()) + "-abcdef"
    assert changed_field(planned, make()) is None
    assert changed_field(planned, make(retries=3)) == "retries"
