from __future__ import annotations

from pathlib import Path

import pytest

import ciflow
from ciflow.distributed.keys import RunKeys
from ciflow.errors import DuplicateModuleError, SpecError
from ciflow.model.module import NAME_MAX, Module, ParallelLimit, registered
from ciflow.stores.file import FileStore
from ciflow.stores.github.cache import KEY_MAX as CACHE_KEY_MAX
from ciflow.stores.github.naming import NAME_MAX as NAME_MAX_ARTIFACT
from ciflow.stores.github.naming import artifact_name, name_prefix


def test_decorator_with_and_without_arguments_registers_in_order() -> None:
    @ciflow.module
    def a(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[a], name="b-custom", category="test", tags=["x"])
    def b(ctx: ciflow.Context) -> None: ...

    assert [m.name for m in registered()] == ["a", "b-custom"]
    assert isinstance(b, Module) and b.category == "test" and b.tags == ("x",)
    assert [d.name for d in b.depends_on] == ["a"]


def test_module_stays_callable_like_the_function() -> None:
    @ciflow.module
    def double(x: int) -> int:
        return 2 * x

    assert double(4) == 8


def test_optional_and_named_dependencies() -> None:
    @ciflow.module
    def docs(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=["build", ciflow.optional(docs)])
    def site(ctx: ciflow.Context) -> None: ...

    assert [(d.name, d.optional) for d in site.depends_on] == [("build", False), ("docs", True)]


def test_not_in_parallel_forms() -> None:
    assert Module(lambda: None, name="a", not_in_parallel="db").not_in_parallel == ("db",)
    both = Module(lambda: None, name="b", not_in_parallel=["db", "port"])
    assert both.not_in_parallel == ("db", "port") and not both.alone
    alone = Module(lambda: None, name="c", not_in_parallel=True)
    assert alone.alone and alone.not_in_parallel == ()


def test_async_functions_are_detected() -> None:
    async def work() -> None: ...

    assert Module(work, name="w").is_async
    assert not Module(lambda: None, name="s").is_async


def test_duplicate_name_is_an_error_naming_both_places() -> None:
    @ciflow.module
    def build(ctx: ciflow.Context) -> None: ...

    with pytest.raises(DuplicateModuleError, match="already defined at test_modules.py:"):

        @ciflow.module(name="build")
        def other(ctx: ciflow.Context) -> None: ...


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"timeout": "10"}, "timeout must be"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer"),
        ({"cost": -2}, "cost must be"),
        ({"depends_on": [42]}, "depends_on takes modules or module names"),
        ({"depends_on": ["a", "a"]}, "depends on 'a' twice"),
        ({"not_in_parallel": [""]}, "not_in_parallel takes True"),
        ({"parallel_limit": ("db", 2)}, "parallel_limit= takes ciflow.ParallelLimit"),
        ({"requires": {"os": "linux"}}, "requires= takes ciflow.Requires"),
        ({"skip_if": True}, "skip_if must be a callable"),
        ({"outputs": ["../escape/*"]}, "must be a relative path inside the workspace"),
        ({"outputs": ["/abs/path"]}, "must be a relative path inside the workspace"),
        ({"cache": True}, "cache=True needs inputs"),
        ({"affinity": ""}, "affinity must be a non-empty string"),
        ({"tags": [1]}, "tags must be a list of non-empty strings"),
        ({"name": "has space"}, "invalid name"),
    ],
)
def test_bad_spec_values_are_clear_errors(spec: dict[str, object], message: str) -> None:
    def target(ctx: ciflow.Context) -> None: ...

    with pytest.raises(SpecError, match=message):
        ciflow.module(**spec)(target)  # type: ignore[call-overload]
    assert registered() == []


def test_unknown_decorator_argument_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match="unknown argument.*depend_on.*known: affinity"):
        ciflow.module(depend_on=["x"])  # type: ignore[call-overload]


def test_parallel_limit_needs_a_positive_count() -> None:
    with pytest.raises(SpecError, match="count must be an integer >= 1"):
        ParallelLimit("db", 0)


def test_decorating_twice_is_an_error() -> None:
    @ciflow.module
    def once(ctx: ciflow.Context) -> None: ...

    with pytest.raises(SpecError, match="applied twice"):
        ciflow.module(once)


def test_requires_normalizes_names_and_reports_what_is_missing() -> None:
    req = ciflow.Requires(os="Darwin", arch=["amd64", "aarch64"], tools=["docker"], tags=["gpu"])
    assert req.os == ("macos",) and req.arch == ("x86_64", "arm64")
    caps = ciflow.Capabilities(os="linux", arch="x86_64", tools=frozenset(), tags=frozenset())
    assert req.missing(caps) == [
        "os macos (this machine: linux)",
        "tool 'docker' on PATH",
        "tag 'gpu'",
    ]
    ok = ciflow.Capabilities(
        os="macos", arch="arm64", tools=frozenset({"docker"}), tags=frozenset({"gpu"})
    )
    assert req.missing(ok) == []
    assert not ciflow.Requires() and req


def test_capabilities_detect_finds_tools_on_path() -> None:
    caps = ciflow.Capabilities.detect(["sh", "ciflow-no-such-tool"], tags=["fast"])
    assert caps.tools == frozenset({"sh"})
    assert caps.tags == frozenset({"fast"})
    assert caps.os in {"linux", "macos", "windows"}


@pytest.mark.parametrize(
    "name", ["a" * (NAME_MAX + 1), "x" * 300, "B" * 1000], ids=lambda n: f"{len(n)}-chars"
)
def test_a_name_longer_than_the_limit_is_refused_when_declared(name: str) -> None:
    def target() -> None: ...

    with pytest.raises(SpecError) as caught:
        ciflow.module(name=name)(target)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 250  # one line, not the whole name
    assert f"name has {len(name)} characters; at most {NAME_MAX} " in message
    assert message.startswith("test_modules.py:")
    assert registered() == []


def test_a_name_of_exactly_the_limit_is_accepted() -> None:
    mod = ciflow.module(name="a" * NAME_MAX)(lambda: None)
    assert mod.name == "a" * NAME_MAX


@pytest.mark.parametrize("name", ["build\n", "a/b", "a@b", "-lead", ".hidden", "", "a b"])
def test_names_outside_the_character_rule_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="invalid name; use letters, digits"):
        ciflow.module(name=name)(lambda: None)


def test_every_record_of_a_module_with_the_longest_name_fits_every_store(
    tmp_path: Path,
) -> None:
    """NAME_MAX is chosen so that GitHub's 256-character artifact names (the tightest store)
    hold every key of a module: with a 32-character namespace, uppercase letters (two characters
    each), a run id of 60 lowercase characters for its own keys, and a GitHub run id and a worker id
    with a 32-character host name for the keys that also name a worker."""
    name = "M" * NAME_MAX
    ns = "n" * 32
    worker = f"s99-{'h' * 32}-4194304-j12345678901"
    own = RunKeys("r" * 60)
    ci = RunKeys("12345678901-3")
    keys = [own.result(name), own.marker(name), own.outputs(name, 9999), own.claim(name, 9999)]
    keys += [ci.request(name, worker), ci.quiet(name, 9999, worker)]
    for key in keys:
        assert len(artifact_name(key, name_prefix(ns))) <= NAME_MAX_ARTIFACT, key
        assert len(f"ciflow-{ns}/{key}~") <= CACHE_KEY_MAX, key
    store = FileStore(f"file://{tmp_path}")
    for key in keys:
        assert store.create(key, b"x")
        assert store.get(key) == b"x"
