"""`Context`: the private environment, logging, commands, branch detection, CI, masking."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import run_registered

import ciflow
from ciflow.errors import CommandFailed, ModuleCancelled
from ciflow.execution.context import Context
from ciflow.execution.masking import MASKER
from ciflow.execution.process import Cancellation
from ciflow.model.outcome import Outcome
from ciflow.ui.console import Console

BRANCH_VARIABLES = [
    "GITHUB_HEAD_REF",
    "GITHUB_REF_NAME",
    "CI_COMMIT_REF_NAME",
    "CIRCLE_BRANCH",
    "BUILDKITE_BRANCH",
    "BRANCH_NAME",
]


class Lines:
    """An output callback that records (module, line) pairs."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, module: str, line: str) -> None:
        with self.lock:
            self.seen.append((module, line))

    def lines(self) -> list[str]:
        return [line for _, line in self.seen]


def make(
    tmp_path: Path,
    *,
    name: str = "mod",
    environ: dict[str, str] | None = None,
    output: Lines | None = None,
    cancellation: Cancellation | None = None,
) -> Context:
    return Context(
        name,
        workdir=tmp_path,
        run_id="run-1",
        output=output if output is not None else Lines(),
        environ=environ,
        cancellation=cancellation,
    )


def base_env(**extra: str) -> dict[str, str]:
    """A minimal environment without any CI or branch variables."""
    return {"PATH": os.environ["PATH"], **extra}


# the private environment -------------------------------------------------------------------


def test_env_starts_as_a_copy_of_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_FROM_PARENT", "parent-value")
    ctx = make(tmp_path)
    assert ctx.env["CIFLOW_FROM_PARENT"] == "parent-value"
    assert ctx.env is ctx.env  # one copy per context, not a fresh one per access
    assert ctx.env is not os.environ


def test_env_changes_do_not_leak_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFLOW_FROM_PARENT", "parent-value")
    monkeypatch.delenv("CIFLOW_PRIVATE", raising=False)
    ctx = make(tmp_path)
    ctx.env["CIFLOW_PRIVATE"] = "mine"
    del ctx.env["CIFLOW_FROM_PARENT"]
    assert "CIFLOW_PRIVATE" not in os.environ
    assert os.environ["CIFLOW_FROM_PARENT"] == "parent-value"
    assert make(tmp_path).env.get("CIFLOW_PRIVATE") is None  # nor to other contexts


def test_env_changes_reach_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFLOW_FROM_PARENT", "parent-value")
    out = Lines()
    ctx = make(tmp_path, output=out)
    ctx.env["CIFLOW_PRIVATE"] = "mine"
    del ctx.env["CIFLOW_FROM_PARENT"]
    ctx.run('echo "private=$CIFLOW_PRIVATE parent=${CIFLOW_FROM_PARENT:-unset}"')
    assert out.lines() == ["private=mine parent=unset"]


def test_given_environ_is_copied_not_shared(tmp_path: Path) -> None:
    given = base_env(ONLY_HERE="1")
    ctx = make(tmp_path, environ=given)
    ctx.env["ADDED"] = "2"
    assert "ADDED" not in given
    assert ctx.env["ONLY_HERE"] == "1"
    assert "HOME" not in ctx.env  # os.environ is not consulted when environ= is given


def test_run_env_argument_overrides_for_one_command_only(tmp_path: Path) -> None:
    out = Lines()
    ctx = make(tmp_path, environ=base_env(WHO="ctx"), output=out)
    ctx.run('echo "$WHO"', env={"WHO": "call"})
    ctx.run('echo "$WHO"')
    assert out.lines() == ["call", "ctx"]
    assert ctx.env["WHO"] == "ctx"


def test_env_is_private_per_module_in_an_engine_run(tmp_path: Path, out: io.StringIO) -> None:
    seen: dict[str, str] = {}

    @ciflow.module
    def first(ctx: ciflow.Context) -> None:
        ctx.env["CIFLOW_SET_BY_FIRST"] = "leaked"

    @ciflow.module(depends_on=[first])
    def second(ctx: ciflow.Context) -> None:
        seen["env"] = ctx.env.get("CIFLOW_SET_BY_FIRST", "unset")
        seen["cmd"] = ctx.run('echo "${CIFLOW_SET_BY_FIRST:-unset}"', capture=True).output
        seen["given"] = ctx.env.get("GIVEN", "")

    result = run_registered(tmp_path, out, jobs=4, environ=base_env(GIVEN="from-engine"))
    assert [r.outcome for r in result.records] == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    assert seen == {"env": "unset", "cmd": "unset", "given": "from-engine"}
    assert "CIFLOW_SET_BY_FIRST" not in os.environ


# logging and output --------------------------------------------------------------------------


def test_log_goes_to_the_output_callback_under_the_module_name(tmp_path: Path) -> None:
    out = Lines()
    ctx = make(tmp_path, name="build", output=out)
    ctx.log("hello")
    ctx.log("two\nlines")
    ctx.log("")
    ctx.log(42)  # type: ignore[arg-type]
    assert out.seen == [
        ("build", "hello"),
        ("build", "two"),
        ("build", "lines"),
        ("build", ""),
        ("build", "42"),
    ]


def test_log_through_a_console_prefixes_the_module_name(tmp_path: Path, out: io.StringIO) -> None:
    console = Console(out, live=False, color=False)
    ctx = Context("lint", workdir=tmp_path, run_id="r", output=console.output)
    ctx.log("checking\nall good")
    assert out.getvalue() == "[lint] checking\n[lint] all good\n"


def test_log_without_a_callback_prints_prefixed_and_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = Context("deploy", workdir=tmp_path, run_id="r")
    ctx.mask("hunter2-secret")
    ctx.log("password is hunter2-secret")
    assert capsys.readouterr().out == "[deploy] password is ***\n"


def test_command_output_is_streamed_under_the_module_name(tmp_path: Path) -> None:
    out = Lines()
    ctx = make(tmp_path, name="test", output=out)
    result = ctx.run([sys.executable, "-c", "print('a'); print('b')"], capture=True)
    assert out.seen == [("test", "a"), ("test", "b")]
    assert result.output == "a\nb"


def test_quiet_hides_command_output_but_capture_keeps_it(tmp_path: Path) -> None:
    out = Lines()
    ctx = make(tmp_path, output=out)
    result = ctx.run("echo hidden", quiet=True, capture=True)
    assert out.seen == []
    assert result.output == "hidden"


def test_run_failure_and_check_false(tmp_path: Path) -> None:
    ctx = make(tmp_path)
    with pytest.raises(CommandFailed) as info:
        ctx.run("echo bad; exit 7")
    assert info.value.returncode == 7 and info.value.tail == ["bad"]
    assert ctx.run("exit 7", check=False).returncode == 7


def test_run_stdin(tmp_path: Path) -> None:
    out = Lines()
    make(tmp_path, output=out).run(["cat"], stdin="fed\n")
    assert out.lines() == ["fed"]


# working directory ---------------------------------------------------------------------------


def test_workdir_is_the_default_cwd(tmp_path: Path) -> None:
    out = Lines()
    ctx = make(tmp_path, output=out)
    assert ctx.workdir == tmp_path
    ctx.run([sys.executable, "-c", "import os; print(os.getcwd())"])
    assert out.lines() == [os.path.realpath(tmp_path)]


def test_relative_cwd_is_under_workdir_and_absolute_cwd_is_kept(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = Lines()
    ctx = make(tmp_path, output=out)
    ctx.run("pwd -P", cwd="sub")
    ctx.run("pwd -P", cwd=elsewhere)
    assert out.lines() == [os.path.realpath(tmp_path / "sub"), os.path.realpath(elsewhere)]


def test_engine_workdir_reaches_the_context(tmp_path: Path, out: io.StringIO) -> None:
    seen: list[object] = []

    @ciflow.module
    def where(ctx: ciflow.Context) -> None:
        seen.append(ctx.workdir)
        seen.append(ctx.run("pwd -P", capture=True).output)
        (ctx.workdir / "made-here").write_text("x")

    result = run_registered(tmp_path, out, jobs=4)
    assert result.exit_code == 0
    assert seen == [tmp_path, os.path.realpath(tmp_path)]
    assert (tmp_path / "made-here").exists()


# branch --------------------------------------------------------------------------------------


@pytest.fixture
def no_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder that git does not see as (inside) a repository."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for name in ("GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(no_repo: Path) -> Path:
    """A git repository with one commit on branch ``main``."""
    repo = no_repo / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "ci@example.invalid")
    git(repo, "config", "user.name", "CI")
    git(repo, "config", "commit.gpgsign", "false")
    git(repo, "checkout", "-q", "-b", "main")
    git(repo, "commit", "-q", "--allow-empty", "-m", "first")
    return repo


@pytest.mark.parametrize("variable", BRANCH_VARIABLES)
def test_branch_from_each_ci_variable(no_repo: Path, variable: str) -> None:
    ctx = make(no_repo, environ=base_env(**{variable: "feature/x"}))
    assert ctx.branch == "feature/x"


def test_pull_request_head_ref_wins_over_ref_name(no_repo: Path) -> None:
    ctx = make(no_repo, environ=base_env(GITHUB_HEAD_REF="topic", GITHUB_REF_NAME="12/merge"))
    assert ctx.branch == "topic"


def test_empty_head_ref_on_push_falls_back_to_ref_name(no_repo: Path) -> None:
    # GitHub sets GITHUB_HEAD_REF to "" for push events
    ctx = make(no_repo, environ=base_env(GITHUB_HEAD_REF="", GITHUB_REF_NAME="main"))
    assert ctx.branch == "main"


def test_branch_variables_are_read_from_ctx_env(no_repo: Path) -> None:
    ctx = make(no_repo, environ=base_env())
    ctx.env["BRANCH_NAME"] = "set-in-module"
    assert ctx.branch == "set-in-module"


def test_branch_from_git(repo: Path) -> None:
    assert make(repo, environ=base_env()).branch == "main"
    git(repo, "checkout", "-q", "-b", "feature/login")
    assert make(repo, environ=base_env()).branch == "feature/login"
    (repo / "deep" / "er").mkdir(parents=True)
    assert make(repo / "deep" / "er", environ=base_env()).branch == "feature/login"


def test_ci_variable_wins_over_git(repo: Path) -> None:
    assert make(repo, environ=base_env(CI_COMMIT_REF_NAME="release")).branch == "release"


def test_detached_head_has_no_branch(repo: Path) -> None:
    git(repo, "commit", "-q", "--allow-empty", "-m", "second")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    assert make(repo, environ=base_env()).branch is None


def test_no_repository_and_no_variable_means_no_branch(no_repo: Path) -> None:
    assert make(no_repo, environ=base_env()).branch is None


def test_no_git_on_path_means_no_branch(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(repo))  # git cannot be found
    assert make(repo, environ=base_env()).branch is None


# on_ci ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("0", False),
        ("No", False),
        ("true", True),
        ("1", True),
        ("TRUE", True),
        ("yes", True),
    ],
)
def test_on_ci(tmp_path: Path, value: str | None, expected: bool) -> None:
    environ = base_env() if value is None else base_env(CI=value)
    assert make(tmp_path, environ=environ).on_ci is expected


def test_on_ci_follows_ctx_env(tmp_path: Path) -> None:
    ctx = make(tmp_path, environ=base_env())
    assert ctx.on_ci is False
    ctx.env["CI"] = "true"
    assert ctx.on_ci is True


# mask ----------------------------------------------------------------------------------------


def test_mask_returns_the_value_and_registers_it(tmp_path: Path) -> None:
    ctx = make(tmp_path)
    assert MASKER.mask("token s3cr3t-value here") == "token s3cr3t-value here"
    assert ctx.mask("s3cr3t-value") == "s3cr3t-value"
    assert MASKER.mask("token s3cr3t-value here") == "token *** here"


def test_masked_value_is_hidden_in_log_and_command_output(tmp_path: Path, out: io.StringIO) -> None:
    console = Console(out, live=False)
    ctx = Context(
        "m",
        workdir=tmp_path,
        run_id="r",
        output=console.output,
        environ=base_env(API_KEY="k3y-abc-123"),
    )
    ctx.mask(ctx.env["API_KEY"])
    ctx.log("key=k3y-abc-123")
    ctx.run('echo "$API_KEY"')
    text = out.getvalue()
    assert "k3y-abc-123" not in text
    assert text == "[m] key=***\n[m] ***\n"


# cancellation --------------------------------------------------------------------------------


def test_cancelled_context_stops_its_command(tmp_path: Path) -> None:
    cancellation = Cancellation()
    out = Lines()
    ctx = make(tmp_path, cancellation=cancellation, output=out)
    assert ctx.cancelled is False
    ctx.check_cancelled()
    errors: list[BaseException] = []

    def body() -> None:
        try:
            ctx.run("echo up; sleep 300")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=body)
    worker.start()
    deadline = threading.Event()
    for _ in range(1000):
        if out.lines() == ["up"]:
            break
        deadline.wait(0.01)
    cancellation.cancel("fail-fast")
    worker.join(30)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ModuleCancelled)
    assert ctx.cancelled is True
    with pytest.raises(ModuleCancelled):
        ctx.check_cancelled()
    with pytest.raises(ModuleCancelled):  # and nothing new starts
        ctx.run("echo never")
    assert "never" not in out.lines()


def test_context_attributes(tmp_path: Path) -> None:
    ctx = Context("m", workdir=tmp_path, run_id="abc", attempt=3)
    assert (ctx.module, ctx.run_id, ctx.attempt) == ("m", "abc", 3)
    assert isinstance(ctx.cancellation, Cancellation)
    assert Context("m", workdir=tmp_path, run_id="x").attempt == 1
