"""Secret masking: the `Masker`, `ciflow.secret`, and no secret in any output of a real run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_registered
from hypothesis import given
from hypothesis import strategies as st

import ciflow
from ciflow.execution.masking import MASK, MASKER, Masker
from ciflow.model.outcome import Outcome, RunResult
from ciflow.testing.chaos_checks import found_in_files
from ciflow.ui.console import Console
from ciflow.ui.report import build_report
from ciflow.ui.summary import render_summary

PIPELINES = Path(__file__).parent / "pipelines"

# the Masker ----------------------------------------------------------------------------------


def test_masks_every_registered_value() -> None:
    masker = Masker()
    masker.add("alpha-111")
    masker.add("beta-222")
    assert masker.mask("a=alpha-111 b=beta-222 again alpha-111.") == "a=*** b=*** again ***."
    assert masker.mask("nothing secret here") == "nothing secret here"
    assert MASK == "***"


def test_nothing_registered_leaves_text_alone() -> None:
    assert Masker().mask("alpha-111 ***") == "alpha-111 ***"


@pytest.mark.parametrize("order", [("abc", "abcdef"), ("abcdef", "abc")])
def test_longest_secret_is_masked_first(order: tuple[str, str]) -> None:
    masker = Masker()
    for value in order:
        masker.add(value)
    assert masker.mask("x abcdef y abc z") == "x *** y *** z"  # not "***def"


def test_multi_line_secret_is_masked_whole_and_line_by_line() -> None:
    masker = Masker()
    masker.add("-----BEGIN KEY-----\nMIIEvQIBADAN\r\n-----END KEY-----\n")
    assert masker.mask("MIIEvQIBADAN") == "***"
    assert masker.mask("line: -----END KEY-----") == "line: ***"
    assert masker.mask("-----BEGIN KEY-----\nMIIEvQIBADAN\r\n-----END KEY-----\n") == "***"


def test_blank_lines_of_a_multi_line_secret_are_not_registered() -> None:
    masker = Masker()
    masker.add("first-part\n\n   \nsecond-part")
    assert masker.mask("a  b\n\n   \nc") == "a  b\n\n   \nc"
    assert masker.mask("first-part") == "***"


@pytest.mark.parametrize("value", ["", None])
def test_empty_value_is_ignored(value: str | None) -> None:
    masker = Masker()
    masker.add(value)
    assert masker.mask("abc") == "abc"
    masker.add("real-secret")
    masker.add(value)
    assert masker.mask("abc real-secret") == "abc ***"


@pytest.mark.parametrize("value", [" ", "\n", "\t", "\r\n"])
def test_whitespace_only_value_is_ignored_like_an_empty_one(value: str) -> None:
    """BUG: a whitespace-only value (e.g. a misconfigured CI secret) is registered whole, so
    every space or newline of every log line, the summary and the report becomes ``***``."""
    masker = Masker()
    masker.add(value)
    text = "two words\tand\nnext line\r\n"
    assert masker.mask(text) == text


def test_regex_characters_in_secrets_are_literal() -> None:
    masker = Masker()
    masker.add("a.b*c(d)|e")
    assert masker.mask("a.b*c(d)|e") == "***"
    assert masker.mask("aXbbbc(d)|e axb*cd e") == "aXbbbc(d)|e axb*cd e"


def test_adding_the_same_value_twice_is_harmless() -> None:
    masker = Masker()
    masker.add("same-value")
    masker.add("same-value")
    assert masker.mask("same-value") == "***"


def test_clear_forgets_every_secret() -> None:
    masker = Masker()
    masker.add("gone-soon")
    masker.clear()
    assert masker.mask("gone-soon") == "gone-soon"


_secret_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="*"),
    min_size=1,
    max_size=12,
).filter(lambda s: s.strip() != "")


@given(
    secrets=st.lists(_secret_text, min_size=1, max_size=4),
    pieces=st.lists(st.one_of(st.text(max_size=8), st.integers(0, 3)), max_size=10),
)
def test_no_registered_secret_survives_masking(secrets: list[str], pieces: list[object]) -> None:
    masker = Masker()
    for value in secrets:
        masker.add(value)
    text = "".join(secrets[p % len(secrets)] if isinstance(p, int) else p for p in pieces)
    masked = masker.mask(text)
    for value in secrets:
        assert value not in masked


@given(st.text(alphabet="abcxyz \n", max_size=40))
def test_text_without_secrets_is_unchanged(text: str) -> None:
    masker = Masker()
    masker.add("QQQ-not-in-alphabet")
    assert masker.mask(text) == text


# ciflow.secret -------------------------------------------------------------------------------


def test_secret_reads_the_environment_and_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFLOW_TEST_TOKEN", "ghp_abcdef123456")
    assert MASKER.mask("ghp_abcdef123456") == "ghp_abcdef123456"
    assert ciflow.secret("CIFLOW_TEST_TOKEN") == "ghp_abcdef123456"
    assert MASKER.mask("Bearer ghp_abcdef123456") == "Bearer ***"


def test_secret_of_an_unset_or_empty_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIFLOW_TEST_UNSET", raising=False)
    monkeypatch.setenv("CIFLOW_TEST_EMPTY", "")
    assert ciflow.secret("CIFLOW_TEST_UNSET") is None
    assert ciflow.secret("CIFLOW_TEST_EMPTY") == ""
    assert MASKER.mask("plain text") == "plain text"


def test_secret_is_masked_by_consoles(monkeypatch: pytest.MonkeyPatch, out: io.StringIO) -> None:
    monkeypatch.setenv("CIFLOW_TEST_TOKEN", "tok-987654")
    console = Console(out, live=False)
    console.output("m", "before tok-987654")  # not yet a secret
    ciflow.secret("CIFLOW_TEST_TOKEN")
    console.output("m", "after tok-987654")
    console.message("tok-987654")
    console.print("summary tok-987654")
    assert out.getvalue() == ("[m] before tok-987654\n[m] after ***\nciflow: ***\nsummary ***\n")


# end to end: a real run through the engine ----------------------------------------------------

TOKEN = "tok-Zq8v-41mX-secret"
PASSWORD = "pw-Hk3-masked-by-ctx"
PEM = "-----BEGIN TEST KEY-----\nQUJDREVGR0hJSktMTU5PUA==\n-----END TEST KEY-----"


@dataclass
class Run:
    result: RunResult
    console: str
    summary: str
    report: str


def _run(tmp_path: Path, out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("TOKEN", TOKEN)
    monkeypatch.setenv("PEM_KEY", PEM)

    @ciflow.module
    def echoes(ctx: ciflow.Context) -> None:
        ciflow.secret("TOKEN")
        ciflow.secret("PEM_KEY")
        ctx.run("echo $TOKEN")
        ctx.run('printf "%s\\n" "$PEM_KEY"')
        ctx.log(f"logged {TOKEN}")

    @ciflow.module
    def command_fails(ctx: ciflow.Context) -> None:
        ciflow.secret("TOKEN")
        ctx.run('echo "token was $TOKEN"; exit 3')

    @ciflow.module
    def raises(ctx: ciflow.Context) -> None:
        password = ctx.mask(PASSWORD)
        raise RuntimeError(f"login failed for password {password}")

    @ciflow.module
    def returns(ctx: ciflow.Context) -> dict[str, str]:
        ciflow.secret("TOKEN")
        return {"header": f"Bearer {TOKEN}"}

    result = run_registered(tmp_path, out, jobs=4, keep_going=True)
    return Run(
        result,
        out.getvalue(),
        render_summary(result),
        build_report(result).model_dump_json(),
    )


@pytest.fixture
def run(tmp_path: Path, out: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> Run:
    return _run(tmp_path, out, monkeypatch)


SECRET_PARTS = [TOKEN, PASSWORD, *PEM.splitlines()]


def test_the_run_did_what_the_masking_tests_rely_on(run: Run) -> None:
    outcomes = {r.name: r.outcome for r in run.result.records}
    assert outcomes == {
        "echoes": Outcome.SUCCEEDED,
        "command_fails": Outcome.FAILED,
        "raises": Outcome.FAILED,
        "returns": Outcome.SUCCEEDED,
    }


def test_console_output_of_a_run_has_no_secret(run: Run) -> None:
    for part in SECRET_PARTS:
        assert part not in run.console
    lines = run.console.splitlines()
    assert lines.count("[echoes] ***") == 4  # echo $TOKEN and the three lines of the key
    assert "[echoes] logged ***" in lines
    assert "[command_fails] token was ***" in lines
    assert "[raises] RuntimeError: login failed for password ***" in lines


def test_run_report_has_no_secret(run: Run) -> None:
    for part in SECRET_PARTS:
        assert part not in run.report
    modules = {m["name"]: m for m in json.loads(run.report)["modules"]}
    assert "token was ***" in modules["command_fails"]["error"]
    assert modules["raises"]["error"] == "RuntimeError: login failed for password ***"
    assert modules["returns"]["result"] == {"header": "Bearer ***"}


def test_summary_has_no_secret(run: Run) -> None:
    """BUG: render_summary() copies ModuleRecord.error verbatim, and the engine stores errors
    unmasked: the command's tail and the exception message show the secrets. (It is only safe
    when printed through Console.print; any other consumer, e.g. a GitHub step summary or a
    file, gets the secret.)"""
    assert "Errors" in run.summary and "command_fails" in run.summary
    for part in SECRET_PARTS:
        assert part not in run.summary
    assert "login failed for password ***" in run.summary
    assert "token was ***" in run.summary


def test_summary_printed_through_the_console_has_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    result = _run(tmp_path, stream, monkeypatch).result
    printed = io.StringIO()
    Console(printed, live=False).print(render_summary(result))
    for part in SECRET_PARTS:
        assert part not in printed.getvalue()
    assert "login failed for password ***" in printed.getvalue()


@pytest.mark.parametrize(
    "value",
    ['quo"te-Secret-1', "back\\slash-Secret-2", "tab\tSecret-3", "uni-ünï-Secret-4"],
    ids=["quote", "backslash", "tab", "non-ascii"],
)
def test_report_result_masks_secrets_that_json_escapes(
    tmp_path: Path, out: io.StringIO, value: str
) -> None:
    """BUG (quote, backslash, tab): build_report masks the result's JSON *text*, where such a
    secret appears escaped (``\\"``, ``\\\\``, ``\\t``), so it is not found and leaks."""

    @ciflow.module
    def returns(ctx: ciflow.Context) -> list[str]:
        ctx.mask(value)
        return ["before", value, "after"]

    result = run_registered(tmp_path, out, jobs=1)
    assert result.records[0].outcome is Outcome.SUCCEEDED
    report = build_report(result)
    assert report.modules[0].result == ["before", "***", "after"]
    assert value not in report.model_dump_json()
    assert value not in json.loads(report.model_dump_json())["modules"][0]["result"]


def test_report_is_built_when_a_secret_spans_json_syntax(tmp_path: Path, out: io.StringIO) -> None:
    """BUG (same root cause): the secret 'hunter2"' matches the JSON text of the result
    {"user": "hunter2"} across the closing quote; masking the text breaks the JSON and
    build_report raises JSONDecodeError, so no report can be written for the run."""

    @ciflow.module
    def returns(ctx: ciflow.Context) -> dict[str, str]:
        ctx.mask('hunter2"')
        return {"user": "hunter2"}

    result = run_registered(tmp_path, out, jobs=1)
    assert result.records[0].outcome is Outcome.SUCCEEDED
    report = build_report(result)
    assert report.modules[0].result == {"user": "hunter2"}


# across the store: a distributed run's records are clean before they leave the worker ---------


def _ciflow(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ciflow", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=180, check=False,
    )  # fmt: skip


def test_a_distributed_run_stores_no_secret_and_its_summary_needs_none(tmp_path: Path) -> None:
    secret = 'dist-s3cr3t"pa%40ss'  # a quote: escaped in JSON text, still found and masked
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIFLOW_")}
    store = tmp_path / "store"
    ran = _ciflow(
        ["dry-run", "-k", "--workers", "2", "--store", store.as_uri(),
         "-f", str(PIPELINES / "secrets.py"), "--report", str(tmp_path / "dry.json")],
        tmp_path, {**clean, "CIFLOW_TEST_SECRET": secret},
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout + ran.stderr  # masks_and_fails failed
    assert "the result of returns contains a registered secret" in ran.stdout
    (run_id,) = [p.name for p in (store / "runs").iterdir()]
    # the summary job has neither the secret nor the password registered with ctx.mask; on
    # GitHub Actions it writes the step summary too
    step = tmp_path / "step-summary.md"
    summary = _ciflow(
        ["summary", "--store", store.as_uri(), "--run-id", run_id,
         "--report", str(tmp_path / "summary.json")],
        tmp_path, {**clean, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step)},
    )  # fmt: skip
    assert summary.returncode == 1, summary.stdout + summary.stderr
    assert "masks_and_fails" in step.read_text()
    for needle in (secret, "pw-only-this-worker-knows"):
        for text in (ran.stdout, ran.stderr, summary.stdout, summary.stderr):
            assert needle not in text
        for report in ("dry.json", "summary.json", "step-summary.md"):
            assert needle not in (tmp_path / report).read_text()
        assert not found_in_files(store, needle.encode())
    modules = {m["name"]: m for m in json.loads((tmp_path / "summary.json").read_text())["modules"]}
    assert modules["masks_and_fails"]["error"] == "RuntimeError: login failed with ***"
    assert modules["returns"]["result"] == {"header": "Bearer ***"}
    assert modules["reads"]["result"] == "Bearer ***"  # what the dependent got: the masked value
