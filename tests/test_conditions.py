"""Skip conditions: the helpers, ``~``/``&``/``|``, their descriptions, on real contexts."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from helpers import run_registered
from hypothesis import given
from hypothesis import strategies as st

import ciflow
from ciflow.execution.context import Context
from ciflow.model.conditions import Condition, env_set, not_on_branch, not_on_ci, on_branch, on_ci
from ciflow.model.outcome import Outcome

NOWHERE = Path("/nonexistent-ciflow-workdir")


def ctx_with(workdir: Path = NOWHERE, **environ: str) -> Context:
    """A real context over exactly ``environ`` (plus PATH)."""
    return Context(
        "m",
        workdir=workdir,
        run_id="r",
        environ={"PATH": os.environ.get("PATH", ""), **environ},
        output=lambda module, line: None,
    )


@pytest.fixture
def no_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder outside any git repository (so the branch is unknown without variables)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.delenv("GIT_DIR", raising=False)
    return tmp_path


# the helpers ---------------------------------------------------------------------------------


def test_on_ci_and_not_on_ci() -> None:
    assert on_ci()(ctx_with(CI="true")) is True
    assert on_ci()(ctx_with(CI="false")) is False
    assert on_ci()(ctx_with()) is False
    assert not_on_ci()(ctx_with(CI="1")) is False
    assert not_on_ci()(ctx_with()) is True
    assert on_ci().description == "on CI"
    assert not_on_ci().description == "not on CI"


def test_on_branch_and_not_on_branch() -> None:
    main = ctx_with(GITHUB_REF_NAME="main")
    dev = ctx_with(GITHUB_REF_NAME="dev")
    assert on_branch("main")(main) is True
    assert on_branch("main")(dev) is False
    assert on_branch("release", "dev")(dev) is True
    assert not_on_branch("main")(main) is False
    assert not_on_branch("main")(dev) is True
    assert not_on_branch("main", "dev")(dev) is False
    assert on_branch("main").description == "on branch main"
    assert on_branch("release", "dev").description == "on branch release or dev"
    assert not_on_branch("main").description == "not on branch main"
    assert not_on_branch("main", "dev").description == "not on branch main or dev"


def test_branch_helpers_with_an_unknown_branch(no_repo: Path) -> None:
    ctx = ctx_with(no_repo)
    assert ctx.branch is None
    assert on_branch("main")(ctx) is False
    assert not_on_branch("main")(ctx) is True  # unknown counts as "not on"


def test_on_branch_is_exact_not_a_prefix() -> None:
    assert on_branch("main")(ctx_with(GITHUB_REF_NAME="main-old")) is False
    assert on_branch("release/1.0")(ctx_with(GITHUB_REF_NAME="release/1.0")) is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("   ", False),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
        ("1", True),
        ("true", True),
        ("yes", True),
        ("pypi-AgEIcHlwaS5vcmc", True),
    ],
)
def test_env_set(value: str | None, expected: bool) -> None:
    ctx = ctx_with() if value is None else ctx_with(PYPI_TOKEN=value)
    assert env_set("PYPI_TOKEN")(ctx) is expected
    assert env_set("PYPI_TOKEN").description == "PYPI_TOKEN is set"


def test_env_set_reads_the_contexts_environment_not_os_environ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIFLOW_ONLY_IN_OS", "1")
    ctx = ctx_with()
    assert env_set("CIFLOW_ONLY_IN_OS")(ctx) is False
    ctx.env["CIFLOW_ONLY_IN_OS"] = "1"
    assert env_set("CIFLOW_ONLY_IN_OS")(ctx) is True


def test_condition_result_is_a_bool_and_repr_shows_the_description() -> None:
    cond = Condition(lambda ctx: "truthy string", "custom reason")
    assert cond(ctx_with()) is True
    assert Condition(lambda ctx: 0, "zero")(ctx_with()) is False
    assert repr(cond) == "Condition('custom reason')"


def test_helpers_are_exported_from_ciflow() -> None:
    assert ciflow.on_ci is on_ci and ciflow.env_set is env_set
    assert ciflow.not_on_branch is not_on_branch and ciflow.Condition is Condition


# combining -----------------------------------------------------------------------------------


def test_invert() -> None:
    assert (~on_ci())(ctx_with(CI="true")) is False
    assert (~on_ci())(ctx_with()) is True
    assert (~env_set("X"))(ctx_with(X="1")) is False
    assert (~on_ci()).description == "not on CI"
    assert (~not_on_ci()).description == "on CI"
    assert (~on_branch("main", "dev")).description == "not on branch main or dev"
    assert (~not_on_branch("main")).description == "on branch main"
    assert (~env_set("X")).description == "X is not set"
    assert (~Condition(lambda ctx: True, "draft PR")).description == "not (draft PR)"


def test_and_or() -> None:
    cond_and = not_on_branch("main") & env_set("X")
    cond_or = not_on_branch("main") | env_set("X")
    assert cond_and.description == "not on branch main and X is set"
    assert cond_or.description == "not on branch main or X is set"
    table = [
        (ctx_with(GITHUB_REF_NAME="dev", X="1"), True, True),
        (ctx_with(GITHUB_REF_NAME="dev"), False, True),
        (ctx_with(GITHUB_REF_NAME="main", X="1"), False, True),
        (ctx_with(GITHUB_REF_NAME="main"), False, False),
    ]
    for ctx, expected_and, expected_or in table:
        assert cond_and(ctx) is expected_and
        assert cond_or(ctx) is expected_or


def test_and_or_short_circuit() -> None:
    calls: list[str] = []

    def probe(name: str, value: bool) -> Condition:
        return Condition(lambda ctx: calls.append(name) or value, name)

    (probe("a", False) & probe("b", True))(ctx_with())
    (probe("c", True) | probe("d", True))(ctx_with())
    assert calls == ["a", "c"]


def test_operators_return_new_conditions_and_leave_operands_alone() -> None:
    a, b = on_ci(), env_set("X")
    combined = ~(a & b) | a
    assert isinstance(combined, Condition)
    assert a.description == "on CI" and b.description == "X is set"


def test_negated_conjunction_is_described_truthfully() -> None:
    """BUG: ~(not_on_ci() & on_branch("main")) is described as "on CI and on branch main"
    (only the leading "not " is stripped), which is the description of ~not_on_ci() &
    on_branch("main"), a different condition. On CI on branch dev the module is skipped
    "because on CI and on branch main": false on both counts."""
    inner = not_on_ci() & on_branch("main")
    negated = ~inner
    other = ~not_on_ci() & on_branch("main")
    ctx = ctx_with(CI="true", GITHUB_REF_NAME="dev")
    assert negated(ctx) is True and other(ctx) is False  # different conditions...
    assert negated.description != other.description  # ...must not read the same
    assert negated.description == "not (not on CI and on branch main)"


def test_grouping_survives_in_descriptions() -> None:
    """BUG: (a | b) & c and a | (b & c) are both described "on CI or X is set and on branch
    main"; the description loses the grouping, so it reads as the wrong condition."""
    a, b, c = on_ci(), env_set("X"), on_branch("main")
    left = (a | b) & c
    right = a | (b & c)
    ctx = ctx_with(CI="true", GITHUB_REF_NAME="dev")
    assert left(ctx) is False and right(ctx) is True
    assert left.description != right.description


def test_double_negation_reads_like_the_original() -> None:
    """BUG (cosmetic): ~~on_ci() is described "(on CI)", with stray parentheses."""
    assert (~~on_ci()).description == "on CI"
    assert (~~env_set("X")).description == "X is set"
    assert (~~not_on_ci()).description == "not on CI"


BASES = {
    "ci": on_ci(),
    "not_ci": not_on_ci(),
    "main": on_branch("main"),
    "not_main": not_on_branch("main"),
    "a": env_set("A"),
    "b": env_set("B"),
}


def _reference(name: str, environ: dict[str, str]) -> bool:
    def truthy(key: str) -> bool:
        return environ.get(key, "").strip().lower() not in {"", "0", "false", "no", "off"}

    return {
        "ci": truthy("CI"),
        "not_ci": not truthy("CI"),
        "main": environ["BRANCH_NAME"] == "main",
        "not_main": environ["BRANCH_NAME"] != "main",
        "a": truthy("A"),
        "b": truthy("B"),
    }[name]


expressions = st.recursive(
    st.sampled_from(sorted(BASES)).map(lambda n: (n,)),
    lambda inner: st.one_of(
        inner.map(lambda e: ("~", e)),
        st.tuples(st.just("&"), inner, inner),
        st.tuples(st.just("|"), inner, inner),
    ),
    max_leaves=6,
)


def _build(expr: tuple) -> Condition:  # type: ignore[type-arg]
    if len(expr) == 1:
        return BASES[expr[0]]
    if expr[0] == "~":
        return ~_build(expr[1])
    left, right = _build(expr[1]), _build(expr[2])
    return left & right if expr[0] == "&" else left | right


def _evaluate(expr: tuple, environ: dict[str, str]) -> bool:  # type: ignore[type-arg]
    if len(expr) == 1:
        return _reference(expr[0], environ)
    if expr[0] == "~":
        return not _evaluate(expr[1], environ)
    left, right = _evaluate(expr[1], environ), _evaluate(expr[2], environ)
    return (left and right) if expr[0] == "&" else (left or right)


@given(
    expr=expressions,
    ci=st.sampled_from([None, "true", "false", "1", ""]),
    branch=st.sampled_from(["main", "dev"]),
    a=st.sampled_from([None, "1", "0", "yes"]),
    b=st.sampled_from([None, "on", "off"]),
)
def test_combinations_evaluate_like_boolean_logic(
    expr: tuple,  # type: ignore[type-arg]
    ci: str | None,
    branch: str,
    a: str | None,
    b: str | None,
) -> None:
    environ = {"BRANCH_NAME": branch}
    for key, value in (("CI", ci), ("A", a), ("B", b)):
        if value is not None:
            environ[key] = value
    assert _build(expr)(ctx_with(**environ)) is _evaluate(expr, environ)


# in a real run: the description is the skip reason ------------------------------------------


def _run(tmp_path: Path, out: io.StringIO, **environ: str) -> dict[str, tuple[Outcome, str]]:
    result = run_registered(
        tmp_path, out, color=False, jobs=4, environ={"PATH": os.environ.get("PATH", ""), **environ}
    )
    return {
        r.name: (r.outcome, r.skip_reason or "") for r in result.records if r.outcome is not None
    }


def test_skip_reason_in_a_run(tmp_path: Path, out: io.StringIO) -> None:
    ran: list[str] = []

    @ciflow.module(skip_if=not_on_branch("main") | ~env_set("PYPI_TOKEN"))
    def publish(ctx: ciflow.Context) -> None:
        ran.append("publish")

    @ciflow.module(depends_on=[publish])
    def announce(ctx: ciflow.Context) -> None:
        ran.append("announce")

    @ciflow.module(skip_if=on_ci())
    def local_only(ctx: ciflow.Context) -> None:
        ran.append("local_only")

    outcomes = _run(tmp_path, out, GITHUB_REF_NAME="dev", CI="true", PYPI_TOKEN="t")
    assert ran == []
    assert outcomes == {
        "publish": (
            Outcome.SKIPPED,
            "skip_if: not on branch main or PYPI_TOKEN is not set",
        ),
        "announce": (Outcome.SKIPPED, "dependency publish was skipped"),
        "local_only": (Outcome.SKIPPED, "skip_if: on CI"),
    }
    assert "[publish] skipped: skip_if: not on branch main or PYPI_TOKEN is not set" in (
        out.getvalue().splitlines()
    )


def test_conditions_that_say_run_let_the_module_run(tmp_path: Path, out: io.StringIO) -> None:
    ran: list[str] = []

    @ciflow.module(skip_if=not_on_branch("main") | ~env_set("PYPI_TOKEN"))
    def publish(ctx: ciflow.Context) -> None:
        ran.append("publish")

    @ciflow.module(skip_if=on_ci())
    def local_only(ctx: ciflow.Context) -> None:
        ran.append("local_only")

    outcomes = _run(tmp_path, out, GITHUB_REF_NAME="main", PYPI_TOKEN="t")
    assert sorted(ran) == ["local_only", "publish"]
    assert outcomes == {
        "publish": (Outcome.SUCCEEDED, ""),
        "local_only": (Outcome.SUCCEEDED, ""),
    }


def test_a_raising_condition_fails_the_module(tmp_path: Path, out: io.StringIO) -> None:
    def broken(ctx: Context) -> bool:
        raise KeyError("NOPE")

    @ciflow.module(skip_if=Condition(broken, "broken"))
    def guarded(ctx: ciflow.Context) -> None:
        raise AssertionError("must not run")

    result = run_registered(tmp_path, out, jobs=1)
    assert result.records[0].outcome is Outcome.FAILED
    assert result.records[0].error == "skip_if raised KeyError: 'NOPE'"
