from __future__ import annotations

import re
from pathlib import Path

import pytest

import ciflow
from ciflow.errors import (
    CycleError,
    DuplicateModuleError,
    PipelineError,
    PipelineLoadError,
    SelectionError,
    SignatureError,
    SpecError,
    UnknownModuleError,
)
from ciflow.model.module import registered
from ciflow.model.pipeline import Pipeline, load_pipeline


def test_load_collects_modules_in_dependency_order(pipelines: Path) -> None:
    pipeline = load_pipeline(pipelines / "basic.py")
    assert pipeline.order == ["lint", "build", "test"]
    assert pipeline.path == (pipelines / "basic.py").resolve()
    assert pipeline.dependents["build"] == ["test"]
    binding = pipeline.bindings["test"]
    assert binding.ctx_param == "ctx" and binding.dep_params == (("build", "build"),)
    assert registered() == []  # the loader leaves the registry empty


def test_loading_twice_gives_the_same_pipeline(pipelines: Path) -> None:
    first = load_pipeline(pipelines / "basic.py")
    second = load_pipeline(pipelines / "basic.py")
    assert list(first.modules) == list(second.modules)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineLoadError, match="pipeline file not found: .*nope.py"):
        load_pipeline(tmp_path / "nope.py")


def test_default_file_is_ciflow_py_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pipelines: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineLoadError, match="create ciflow.py or pass -f PATH"):
        load_pipeline()
    (tmp_path / "ciflow.py").write_text((pipelines / "basic.py").read_text())
    assert len(load_pipeline()) == 3


def test_syntax_error_names_file_and_line(pipelines: Path) -> None:
    with pytest.raises(PipelineLoadError, match=r"syntax_error.py:5: syntax error"):
        load_pipeline(pipelines / "syntax_error.py")


def test_import_error_names_the_line_and_exception(pipelines: Path) -> None:
    with pytest.raises(PipelineLoadError, match=r"import_error.py:4: .*KeyError: 'missing'"):
        load_pipeline(pipelines / "import_error.py")


def test_sys_exit_at_import_is_a_load_error_naming_the_call(pipelines: Path) -> None:
    with pytest.raises(
        PipelineLoadError,
        match=r"^exit_at_import.py:12: the pipeline file called sys.exit\(7\) at import; ",
    ):
        load_pipeline(pipelines / "exit_at_import.py")
    assert registered() == []


@pytest.mark.parametrize(
    ("statement", "call"),
    [
        ("sys.exit()", "sys.exit()"),
        ("sys.exit('bye')", "sys.exit('bye')"),
        ("exit(0)", "sys.exit(0)"),
    ],
)
def test_every_form_of_exit_at_import_is_named(tmp_path: Path, statement: str, call: str) -> None:
    file = tmp_path / "ciflow.py"
    file.write_text(f"import sys\n{statement}\n")
    with pytest.raises(
        PipelineLoadError, match=f"ciflow.py:2: the pipeline file called {re.escape(call)}"
    ):
        load_pipeline(file)


def test_a_base_exception_at_import_is_a_load_error(pipelines: Path) -> None:
    with pytest.raises(
        PipelineLoadError,
        match=r"^base_exception_at_import.py:14: error while importing the pipeline: "
        r"Abort: pipeline aborted$",
    ):
        load_pipeline(pipelines / "base_exception_at_import.py")


def test_keyboard_interrupt_at_import_stays_an_interrupt(pipelines: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        load_pipeline(pipelines / "interrupt_at_import.py")
    assert registered() == []


def test_cycle_is_shown(pipelines: Path) -> None:
    with pytest.raises(
        CycleError,
        match=r"dependency cycle: (a -> c -> b -> a|b -> a -> c -> b|"
        r"c -> b -> a -> c)",
    ):
        load_pipeline(pipelines / "cycle.py")


def test_unknown_dependency_suggests_a_name(pipelines: Path) -> None:
    with pytest.raises(UnknownModuleError, match=r"unknown module 'biuld' \(did you mean 'build'"):
        load_pipeline(pipelines / "unknown_dependency.py")


def test_duplicate_module(pipelines: Path) -> None:
    with pytest.raises(DuplicateModuleError, match="'build' is already defined"):
        load_pipeline(pipelines / "duplicate.py")


def test_parameter_naming_no_dependency(pipelines: Path) -> None:
    with pytest.raises(SignatureError, match=r"parameter 'wheel' names no dependency.*build"):
        load_pipeline(pipelines / "bad_parameter.py")


def test_file_without_modules(pipelines: Path) -> None:
    with pytest.raises(PipelineError, match="no modules defined in .*empty.py"):
        load_pipeline(pipelines / "empty.py")


def test_parameters_bind_by_dependency_name_with_dashes_as_underscores() -> None:
    @ciflow.module(name="build-wheel")
    def build(ctx: ciflow.Context) -> str:
        return "w"

    @ciflow.module(depends_on=[build])
    def test(context: ciflow.Context, build_wheel: str, extra: int = 3) -> None: ...

    pipeline = Pipeline(registered())
    binding = pipeline.bindings["test"]
    assert binding.ctx_param == "context"
    assert binding.dep_params == (("build_wheel", "build-wheel"),)


def test_context_parameter_found_by_annotation() -> None:
    @ciflow.module
    def work(c: ciflow.Context) -> None: ...

    assert Pipeline(registered()).bindings["work"].ctx_param == "c"


def test_unresolvable_annotation_is_a_signature_error() -> None:
    @ciflow.module
    def work(ctx: ciflow.Context) -> NoSuchType:  # type: ignore[name-defined]  # noqa: F821
        ...

    with pytest.raises(SignatureError, match="cannot resolve its annotations"):
        Pipeline(registered())


class Opaque:
    """Not a type pydantic can serialize."""


def test_unserializable_return_annotation_is_a_spec_error() -> None:
    @ciflow.module
    def work(ctx: ciflow.Context) -> Opaque: ...  # type: ignore[empty-body]

    with pytest.raises(SpecError, match="return annotation Opaque cannot be serialized"):
        Pipeline(registered())


def test_one_count_per_limit_name() -> None:
    @ciflow.module(parallel_limit=ciflow.ParallelLimit("db", 2))
    def a(ctx: ciflow.Context) -> None: ...

    @ciflow.module(parallel_limit=ciflow.ParallelLimit("db", 3))
    def b(ctx: ciflow.Context) -> None: ...

    with pytest.raises(SpecError, match="limit 'db' has count 3 here but 2 elsewhere"):
        Pipeline(registered())


def _selection_pipeline() -> Pipeline:
    @ciflow.module(category="build")
    def build(ctx: ciflow.Context) -> None: ...

    @ciflow.module(category="docs")
    def docs(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[build, ciflow.optional(docs)], category="test")
    def test(ctx: ciflow.Context) -> None: ...

    @ciflow.module(depends_on=[test], category="release")
    def publish(ctx: ciflow.Context) -> None: ...

    return Pipeline(registered())


def test_select_everything_by_default() -> None:
    selection = _selection_pipeline().select()
    assert selection.names == ("build", "docs", "test", "publish")
    assert selection.skipped == frozenset()


def test_only_adds_required_but_not_optional_dependencies() -> None:
    assert _selection_pipeline().select(only=["test"]).names == ("build", "test")


def test_category_selects_members_and_their_requirements() -> None:
    pipeline = _selection_pipeline()
    assert pipeline.select(categories=["release"]).names == ("build", "test", "publish")
    assert pipeline.select(categories=["docs"], only=["build"]).names == ("build", "docs")


def test_skip_keeps_the_module_listed_as_skipped() -> None:
    selection = _selection_pipeline().select(skip=["docs"])
    assert "docs" in selection.names and selection.skipped == frozenset({"docs"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"only": ["tset"]}, r"no module named 'tset' \(did you mean 'test'\?\)"),
        ({"skip": ["nothing"]}, "no module named 'nothing'"),
        ({"categories": ["lint"]}, r"no module has category 'lint' \(categories: build, docs"),
    ],
)
def test_selectors_matching_nothing_are_errors(kwargs: dict[str, list[str]], message: str) -> None:
    with pytest.raises(SelectionError, match=message):
        _selection_pipeline().select(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first", "second"), [("a_b", "a-b"), ("a-b", "a.b"), ("a.b", "a_b")])
def test_two_modules_binding_to_one_parameter_are_refused(first: str, second: str) -> None:
    ciflow.module(name=first)(lambda: 1)
    ciflow.module(name=second)(lambda: 2)

    @ciflow.module(depends_on=[first, second])
    def uses(a_b: int) -> None: ...

    with pytest.raises(
        DuplicateModuleError,
        match=rf"^test_pipeline.py:\d+: modules {first!r} \(test_pipeline.py:\d+\) and "
        rf"{re.escape(repr(second))} both bind to the parameter 'a_b'; rename one of them$",
    ):
        Pipeline(registered())


def test_modules_binding_to_one_parameter_are_refused_even_if_nothing_uses_them() -> None:
    ciflow.module(name="lint-py")(lambda: None)
    ciflow.module(name="lint_py")(lambda: None)
    with pytest.raises(DuplicateModuleError, match="'lint-py' .* and 'lint_py' both bind"):
        Pipeline(registered())


def test_names_differing_only_in_case_are_refused() -> None:
    ciflow.module(name="Build")(lambda: None)
    ciflow.module(name="build")(lambda: None)
    with pytest.raises(DuplicateModuleError, match="'Build' .* and 'build' differ only in case"):
        Pipeline(registered())


def test_a_name_clash_in_a_file_is_a_load_error(pipelines: Path) -> None:
    with pytest.raises(
        DuplicateModuleError,
        match=r"^parameter_clash.py:11: modules 'a_b' \(parameter_clash.py:6\) and 'a-b' both",
    ):
        load_pipeline(pipelines / "parameter_clash.py")
