"""The CI examples: GitLab, Kubernetes, Docker Compose, Buildkite and CircleCI (examples/*/).

- Each file is validated offline: the CI configurations against the schemas check-jsonschema
  vendors (`vendor.gitlab-ci`, `vendor.compose-spec`, `vendor.buildkite`, `vendor.circle-ci`),
  the Kubernetes manifests with kubernetes-validate (strict, two Kubernetes versions). A broken
  copy of each must fail, so a schema that accepts anything cannot pass the test. A missing
  validator fails the test; nothing here is skipped.
- Each example's ciflow commands (the `script:`/`command:` lines, read from its YAML) run here as
  subprocesses, each job in its own checkout of `pipelines/distributed.py` as `ciflow.py`, with
  the variables that CI gives its jobs (GitLab's 1-based `CI_NODE_INDEX`, `JOB_COMPLETION_INDEX`
  of an Indexed Job, ...) and the example's own variables, against a real store: `store`.
  Every worker must exit 0 on the slot its CI's variables name, and the summary must say OK.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ciflow.distributed.keys import RunKeys
from ciflow.stores import open_store

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
PIPELINE = Path(__file__).parent / "pipelines" / "distributed.py"
MODULES = ("prepare", "unit_a", "unit_b", "unit_c", "report")
TIMEOUT = 120  # seconds for one process; a run of distributed.py takes about 3

#: each CI configuration and the check-jsonschema schema that validates it
SCHEMAS = {
    "gitlab/.gitlab-ci.yml": "vendor.gitlab-ci",
    "compose/compose.yaml": "vendor.compose-spec",
    "buildkite/pipeline.yml": "vendor.buildkite",
    "circleci/config.yml": "vendor.circle-ci",
}
K8S = EXAMPLES / "kubernetes"
#: the oldest Kubernetes the manifests claim (backoffLimitPerIndex is GA) and the newest one
#: kubernetes-validate bundles (1.37 with kubernetes-validate 1.37)
K8S_VERSIONS = ("1.33", "newest")
#: the store URL schemes the examples may use, and the ciflow extra each needs
EXTRAS = {"redis": "redis", "rediss": "redis", "s3": "s3"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
INSTALL = re.compile(r"^(?:python3? -m )?pip install (?:--no-cache-dir )?'ciflow\[(\w+)\]'$")
#: variables of the machine running the tests that a CI job would not have
FOREIGN = ("CIFLOW_", "GITHUB_", "ACTIONS_", "RUNNER_", "CI_", "GITLAB_", "BUILDKITE", "CIRCLE")
FOREIGN_NAMES = {"CI", "JOB_COMPLETION_INDEX", "HOSTNAME"}


# --- validators --------------------------------------------------------------------------------


def check_jsonschema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip


def k8s_utils() -> Any:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")
    from kubernetes_validate import utils

    return utils


def k8s_validate(doc: dict[str, Any], version: str) -> None:
    """Raise unless ``doc`` is a valid object of a kind the bundled schemas know (strict)."""
    utils = k8s_utils()
    if version == "newest":
        version = utils.latest_version()
    # the command line only warns about a kind it has no schema for; the API raises
    utils.validate(doc, version, strict=True)


def load(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))


def k8s_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path, doc


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_example_validates_against_its_vendored_schema(name: str) -> None:
    result = check_jsonschema(SCHEMAS[name], EXAMPLES / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def _typo(unit: dict[str, Any], key: str) -> None:
    unit[key + "_typo"] = unit.pop(key)


#: a plausible mistake in each file, which its schema must reject
BREAKAGES: dict[str, Callable[[Any], None]] = {
    "gitlab/.gitlab-ci.yml": lambda d: d["work"].__setitem__("parallel", 0),
    "compose/compose.yaml": lambda d: _typo(d["services"]["worker"], "depends_on"),
    "buildkite/pipeline.yml": lambda d: d["steps"][1].__setitem__("parallelism", "four"),
    "circleci/config.yml": lambda d: _typo(d["jobs"]["work"], "parallelism"),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_vendored_schema_rejects_a_broken_copy(name: str, tmp_path: Path) -> None:
    doc = load(name)
    BREAKAGES[name](doc)
    broken = tmp_path / Path(name).name
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = check_jsonschema(SCHEMAS[name], broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors were encountered" in result.stdout


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_offline(version: str) -> None:
    kinds = []
    for path, doc in k8s_docs():
        try:
            k8s_validate(doc, version)
        except Exception as exc:  # the validator's errors name the field, not the file
            pytest.fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc}")
        kinds.append(doc["kind"])
    assert sorted(set(kinds)) == [
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "Secret",
        "Service",
    ]


def test_kubernetes_validation_rejects_an_unknown_field() -> None:
    job = next(d for _, d in k8s_docs() if d["metadata"]["name"] == "ciflow-workers")
    job["spec"]["template"]["spec"]["containers"][0]["comand"] = ["ciflow", "worker"]
    with pytest.raises(k8s_utils().ValidationError, match="comand"):
        k8s_validate(job, K8S_VERSIONS[-1])


def test_every_example_folder_explains_itself() -> None:
    for folder in ("gitlab", "kubernetes", "compose", "buildkite", "circleci"):
        readme = (EXAMPLES / folder / "README.md").read_text(encoding="utf-8")
        for path in (EXAMPLES / folder).iterdir():
            if path.is_file() and path.name != "README.md":
                assert f"`{path.name}`" in readme or f"({path.name})" in readme, (folder, path)


# --- the examples as jobs ----------------------------------------------------------------------


@dataclass
class Job:
    """One CI job (or pod, or container) of an example."""

    name: str
    command: list[str]  # as the CI runs it: ["ciflow", "worker"]
    env: dict[str, str]  # what the CI and the example give the job
    slot: int | None = None  # the slot the CI's variables name (a worker)
    installs: list[str] = field(default_factory=list)  # the ciflow extras its script installs

    def instance(self, name: str, slot: int | None, **env: str) -> Job:
        """One of the parallel jobs the CI starts for this one, with its own variables."""
        return dataclasses.replace(self, name=name, env={**self.env, **env}, slot=slot)


@dataclass
class Flow:
    """An example's run: what starts, in which order, and what the store must hold after it."""

    plan: Job
    workers: list[Job]
    summary: Job
    run_id: str  # the run id every job must derive
    store: str  # the example's own store URL (the test's store replaces it)
    report: str | None = None  # the summary's report, kept as an artifact
    plan_with_workers: bool = False  # started together (Kubernetes), else plan first
    scripts: dict[str, Path] = field(default_factory=dict)  # image paths -> files here


def commands(lines: list[str]) -> tuple[list[str], list[str]]:
    """The one ciflow command of a job's script lines and the ciflow extras it installs; any
    other line is an error: the example must stay runnable here."""
    found, installs = [], []
    for line in (part.strip() for text in lines for part in text.splitlines()):
        if not line:
            continue
        if match := INSTALL.match(line):
            installs.append(match[1])
            continue
        assert line.startswith("ciflow "), f"a line the test cannot run: {line!r}"
        found.append(shlex.split(line))
    assert len(found) == 1, f"one ciflow command per job, not {found}"
    return found[0], installs


def by_role(jobs: list[Job]) -> dict[str, Job]:
    """plan, worker and summary: each job's role is its ciflow command."""
    roles: dict[str, Job] = {}
    for job in jobs:
        role = job.command[job.command.index("ciflow") + 1]
        assert role not in roles, f"two {role} jobs"
        roles[role] = job
    assert sorted(roles) == ["plan", "summary", "worker"], roles
    return roles


def planned_workers(plan: Job) -> int:
    """The slot count of the plan job's ``--workers N``."""
    return int(plan.command[plan.command.index("--workers") + 1])


def gitlab() -> Flow:
    doc = load("gitlab/.gitlab-ci.yml")
    pipeline = str(uuid.uuid4().int % 10**9)
    jobs = []
    specs = [(k, v) for k, v in doc.items() if isinstance(v, dict) and "script" in v]
    for job_id, (name, spec) in enumerate(specs):
        env = {**doc.get("variables", {}), **spec.get("variables", {})}
        before = spec.get("before_script", doc.get("default", {}).get("before_script", []))
        command, installs = commands([*before, *spec["script"]])
        env |= {"GITLAB_CI": "true", "CI": "true", "CI_PIPELINE_ID": pipeline}
        env |= {"CI_JOB_ID": str(1000 + job_id), "CI_JOB_NAME": name, "CI_NODE_TOTAL": "1"}
        env["CI_COMMIT_REF_NAME"] = "main"
        jobs.append((spec, Job(name, command, env, installs=installs)))
    roles = by_role([job for _, job in jobs])
    spec = next(s for s, j in jobs if j is roles["worker"])
    total = spec["parallel"]
    assert planned_workers(roles["plan"]) == total
    workers = []
    for index in range(1, total + 1):  # GitLab numbers `parallel:` jobs from 1
        env = {"CI_NODE_INDEX": str(index), "CI_NODE_TOTAL": str(total)}
        env["CI_JOB_NAME"] = f"work {index}/{total}"
        workers.append(roles["worker"].instance(f"work-{index}", index - 1, **env))
    summary = next(s for s, j in jobs if j is roles["summary"])
    assert summary["when"] == "always" and summary["artifacts"]["when"] == "always"
    (report,) = summary["artifacts"]["paths"]
    store = roles["worker"].env["CIFLOW_STORE"]
    return Flow(roles["plan"], workers, roles["summary"], pipeline, store, report)


def buildkite() -> Flow:
    doc = load("buildkite/pipeline.yml")
    build = str(uuid.uuid4())
    jobs, specs = [], {}
    for spec in doc["steps"]:
        env = {**doc.get("env", {}), **spec.get("env", {})}
        command, installs = commands(spec.get("commands") or [spec["command"]])
        env |= {"BUILDKITE": "true", "CI": "true", "BUILDKITE_BUILD_ID": build}
        env |= {"BUILDKITE_JOB_ID": str(uuid.uuid4()), "BUILDKITE_BRANCH": "main"}
        jobs.append(Job(spec["key"], command, env, installs=installs))
        specs[spec["key"]] = spec
    roles = by_role(jobs)
    total = specs[roles["worker"].name]["parallelism"]
    assert planned_workers(roles["plan"]) == total
    workers = []
    for index in range(total):  # BUILDKITE_PARALLEL_JOB counts from 0
        env = {"BUILDKITE_JOB_ID": str(uuid.uuid4())}
        env |= {"BUILDKITE_PARALLEL_JOB": str(index), "BUILDKITE_PARALLEL_JOB_COUNT": str(total)}
        workers.append(roles["worker"].instance(f"work-{index}", index, **env))
    summary = specs[roles["summary"].name]
    assert summary["depends_on"] == [{"step": roles["worker"].name, "allow_failure": True}]
    store = roles["worker"].env["CIFLOW_STORE"]
    return Flow(roles["plan"], workers, roles["summary"], build, store, summary["artifact_paths"])


def _circleci_steps(doc: dict[str, Any], steps: list[Any]) -> tuple[list[str], list[str]]:
    """A CircleCI job's run lines (reusable commands expanded) and its artifact paths."""
    lines: list[str] = []
    artifacts: list[str] = []
    for step in steps:
        if step == "checkout":
            continue
        if isinstance(step, str):
            more, kept = _circleci_steps(doc, doc["commands"][step]["steps"])
            lines += more
            artifacts += kept
            continue
        ((kind, body),) = step.items()
        if kind == "run":
            lines.append(body if isinstance(body, str) else body["command"])
        elif kind == "store_artifacts":
            assert body.get("when") == "always", "keep the report of a failed run too"
            artifacts.append(body["path"])
        else:
            raise AssertionError(f"a step the test does not know: {kind}")
    return lines, artifacts


def circleci() -> Flow:
    doc = load("circleci/config.yml")
    workflow_id = str(uuid.uuid4())
    (workflow,) = doc["workflows"].values()
    invoked = {name: spec for item in workflow["jobs"] for name, spec in item.items()}
    jobs, reports, parallelism = [], {}, {}
    for number, (name, spec) in enumerate(doc["jobs"].items()):
        executor = doc["executors"][spec["executor"]]
        env = {**executor.get("environment", {}), **spec.get("environment", {})}
        lines, reports[name] = _circleci_steps(doc, spec["steps"])
        command, installs = commands(lines)
        env |= {"CIRCLECI": "true", "CI": "true", "CIRCLE_WORKFLOW_ID": workflow_id}
        env |= {"CIRCLE_BUILD_NUM": str(100 + number), "CIRCLE_BRANCH": "main"}
        env |= {"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "1"}  # also without parallelism
        jobs.append(Job(name, command, env, installs=installs))
        parallelism[name] = spec.get("parallelism", 1)
        assert invoked[name]["context"], f"{name}: the AWS credentials come from a context"
    roles = by_role(jobs)
    work, plan, summary = roles["worker"], roles["plan"], roles["summary"]
    total = parallelism[work.name]
    assert planned_workers(plan) == total
    assert invoked[work.name]["requires"] == [plan.name]
    assert invoked[summary.name]["requires"] == [{work.name: ["success", "failed"]}]
    workers = []
    for index in range(total):  # CIRCLE_NODE_INDEX counts from 0
        env = {"CIRCLE_NODE_INDEX": str(index), "CIRCLE_NODE_TOTAL": str(total)}
        workers.append(work.instance(f"work-{index}", index, **env))
    (report,) = reports[summary.name]
    return Flow(plan, workers, summary, workflow_id, work.env["CIFLOW_STORE"], report)


@dataclass
class Image:
    """What a Dockerfile puts in its image: ciflow extras installed, scripts copied in."""

    installs: list[str]
    scripts: dict[str, Path]  # path in the image -> the file here

    @classmethod
    def of(cls, dockerfile: Path) -> Image:
        text = dockerfile.read_text(encoding="utf-8")
        runs = re.findall(r"^RUN (.*)$", text, re.M)
        copies = re.findall(r"^COPY (\S+\.py) (\S+)$", text, re.M)
        installs = [m[1] for line in runs if (m := INSTALL.match(line))]
        return cls(installs, {dest: ROOT / src for src, dest in copies})


_K8S_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _k8s_data(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "ConfigMap":
        return dict(obj["data"])
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    return data | (obj.get("stringData") or {})


def k8s_expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(NAME)`` (left as it is when ``NAME`` is not defined)."""
    return _K8S_REF.sub(lambda m: env.get(m[1], m[0]), text)


def pod_env(container: dict[str, Any], objects: dict[tuple[str, str], Any]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: ``envFrom``, then ``env`` in order
    (``$(NAME)`` of an earlier entry expanded, ``valueFrom`` read from the manifests)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ((kind, ref),) = source.items()
        obj = objects.get(({"secretRef": "Secret", "configMapRef": "ConfigMap"}[kind], ref["name"]))
        assert obj is not None or ref.get("optional"), f"no {ref['name']} among the manifests"
        env |= _k8s_data(obj) if obj is not None else {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = k8s_expand(item["value"], env)
            continue
        ((kind, ref),) = item["valueFrom"].items()
        obj = objects[
            ({"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap"}[kind], ref["name"])
        ]
        env[item["name"]] = _k8s_data(obj)[ref["key"]]
    return env


def kubernetes() -> Flow:
    image = Image.of(EXAMPLES / "compose" / "Dockerfile")  # what README.md builds
    objects = {(d["kind"], d["metadata"]["name"]): d for _, d in k8s_docs()}
    run_id = f"run-{uuid.uuid4().hex[:12]}"  # as README.md creates the ConfigMap for a run
    objects[("ConfigMap", "ciflow-run")]["data"]["run-id"] = run_id
    jobs, specs = [], {}
    for (kind, name), obj in objects.items():
        if kind != "Job":
            continue
        (container,) = obj["spec"]["template"]["spec"]["containers"]
        env = pod_env(container, objects)
        command = [
            k8s_expand(arg, env) for arg in [*container["command"], *container.get("args", [])]
        ]
        jobs.append(Job(name, command, env, installs=image.installs))
        specs[name] = obj["spec"]
    roles = by_role(jobs)
    work = roles["worker"]
    spec = specs[work.name]
    total = spec["completions"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == total
    assert planned_workers(roles["plan"]) == total
    workers = [  # the Job controller gives each pod its index
        work.instance(f"{work.name}-{index}", index, JOB_COMPLETION_INDEX=str(index))
        for index in range(total)
    ]
    flow = Flow(roles["plan"], workers, roles["summary"], run_id, work.env["CIFLOW_STORE"])
    flow.plan_with_workers = True  # kubectl apply -f run.yaml starts both
    flow.scripts = image.scripts
    return flow


_COMPOSE_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def compose_interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of host variables: ``${X}``, ``${X:-d}``, ``${X:?e}``, ``$$``."""
    if isinstance(value, dict):
        return {k: compose_interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [compose_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        if m[0] == "$$":
            return "$"
        op, have = m["op"] or "", env.get(m["name"] or m["bare"])
        if op.endswith("?"):
            assert have if op == ":?" else have is not None, m["arg"]
        if op.endswith("-") and not (have if op == ":-" else have is not None):
            return m["arg"]
        return have or ""

    return _COMPOSE_VAR.sub(one, value)


def compose() -> Flow:
    readme = (EXAMPLES / "compose" / "README.md").read_text(encoding="utf-8")
    header = (EXAMPLES / "compose" / "compose.yaml").read_text(encoding="utf-8")
    started = r"^(?:# )?docker compose up [^\n]*--scale worker=(\d+)"  # the commands shown
    (scale,) = set(re.findall(started, readme, re.M) + re.findall(started, header, re.M))
    run_id = f"run-{uuid.uuid4().hex[:12]}"  # export CIFLOW_RUN_ID=... as README.md says
    doc = compose_interpolate(load("compose/compose.yaml"), {"CIFLOW_RUN_ID": run_id})
    image = Image.of(EXAMPLES / "compose" / "Dockerfile")
    jobs = []
    for name, service in doc["services"].items():
        if "build" not in service:  # redis
            continue
        command = service["command"]
        command = shlex.split(command) if isinstance(command, str) else command
        command = [*service.get("entrypoint", []), *command]
        jobs.append(Job(name, command, dict(service["environment"]), installs=image.installs))
    roles = by_role(jobs)
    work = roles["worker"]
    total = int(work.env["CIFLOW_WORKERS"])
    assert planned_workers(roles["plan"]) == total == int(scale)
    workers = [  # Docker gives every container its own HOSTNAME, and no number
        work.instance(f"worker-{index}", None, HOSTNAME=f"c0ffee{index:06d}")
        for index in range(total)
    ]
    flow = Flow(roles["plan"], workers, roles["summary"], run_id, work.env["CIFLOW_STORE"])
    flow.scripts = image.scripts
    return flow


FLOWS: dict[str, Callable[[], Flow]] = {
    "gitlab": gitlab,
    "kubernetes": kubernetes,
    "compose": compose,
    "buildkite": buildkite,
    "circleci": circleci,
}


# --- what the examples promise without running ---------------------------------------------------


@pytest.mark.parametrize("example", sorted(FLOWS))
def test_example_installs_the_extra_its_store_needs(example: str) -> None:
    flow = FLOWS[example]()
    scheme = urlsplit(flow.store).scheme
    assert scheme in EXTRAS, f"{example}: a store the jobs can share, not {flow.store}"
    for job in (flow.plan, *flow.workers, flow.summary):
        assert job.installs == [EXTRAS[scheme]], (example, job.name, job.installs)
        assert job.env["CIFLOW_STORE"] == flow.store, (example, job.name)
        assert "--store" not in job.command and "--run-id" not in job.command, job.command


@pytest.mark.parametrize("example", sorted(FLOWS))
def test_example_keeps_secrets_out_of_its_files(example: str) -> None:
    flow = FLOWS[example]()
    for job in (flow.plan, *flow.workers, flow.summary):
        for name in job.env:
            if SECRET_NAME.search(name):  # only from the CI's secrets, the shell or a Secret
                assert example in ("kubernetes", "compose"), (example, job.name, name)
        assert urlsplit(job.env["CIFLOW_STORE"]).password is None, "a password in the URL"
    if example == "compose":  # tokens come from the shell running docker compose
        raw = load("compose/compose.yaml")["services"]["worker"]["environment"]
        assert all(v.startswith("${") for k, v in raw.items() if SECRET_NAME.search(k)), raw
    if example == "kubernetes":
        for _, doc in k8s_docs():
            if doc["kind"] == "Secret":
                assert set((doc.get("stringData") or {}).values()) <= {"REPLACE-ME"}, doc
                assert not doc.get("data"), doc
            for container in _containers(doc):
                for item in container.get("env", []):
                    if SECRET_NAME.search(item["name"]):
                        assert "secretKeyRef" in item["valueFrom"], item
    if example == "buildkite":
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(
            load("buildkite/pipeline.yml")["secrets"]
        )


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    template = doc.get("spec", {}).get("template", {})
    return list(template.get("spec", {}).get("containers", []))


def test_the_shared_redis_is_the_one_the_store_urls_name() -> None:
    flow = kubernetes()
    k8s = urlsplit(flow.store)
    service = next(d for _, d in k8s_docs() if d["kind"] == "Service")
    assert (k8s.scheme, k8s.hostname, k8s.port) == ("redis", service["metadata"]["name"], 6379)
    assert service["spec"]["ports"][0]["port"] == k8s.port
    # ciflow's pods send the password Redis requires: both from one key of one Secret
    redis = next(d for _, d in k8s_docs() if d["kind"] == "Deployment")
    (server,) = _containers(redis)
    required = re.search(r'--requirepass "\$(\w+)"', " ".join(server["args"]))
    assert required is not None, server["args"]
    (source,) = [e["valueFrom"] for e in server["env"] if e["name"] == required[1]]
    for job in (flow.plan, *flow.workers, flow.summary):
        assert job.env["CIFLOW_STORE_PASSWORD"] == "REPLACE-ME", job.name  # the placeholder
    for _, doc in k8s_docs():
        for container in _containers(doc):
            if container["command"][0] == "ciflow":
                (sent,) = [e for e in container["env"] if e["name"] == "CIFLOW_STORE_PASSWORD"]
                assert sent["valueFrom"] == source, sent
    local = urlsplit(compose().store)
    assert local.hostname in load("compose/compose.yaml")["services"] and local.port == 6379


# --- running the examples' commands --------------------------------------------------------------

#: the stores the local runs use: "file" (a folder), "redis" (tests/redis_server.py's server,
#: with a password), "s3" (moto's server, tests/s3_server.py); http:// is one more branch
STORES = ["file", "redis", "s3"]


@dataclass(frozen=True)
class LocalStore:
    """The store a local run uses in place of the example's."""

    url: str  # without a password
    password: str | None = None
    full: str = ""  # the URL with the password in it
    extra: tuple[tuple[str, str], ...] = ()  # what the store's clients need (AWS_* for moto)

    def env_of(self, job: Job) -> dict[str, str]:
        """``CIFLOW_STORE`` for ``job``; where the example's own secret sends the password
        (``CIFLOW_STORE_PASSWORD``), the store's password is that secret's value."""
        if "CIFLOW_STORE_PASSWORD" in job.env:
            return {"CIFLOW_STORE": self.url, "CIFLOW_STORE_PASSWORD": self.password or "",
                    **dict(self.extra)}  # fmt: skip
        return {"CIFLOW_STORE": self.full or self.url, **dict(self.extra)}


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalStore]:
    if request.param == "file":
        yield LocalStore((tmp_path / "store").as_uri())
    elif request.param == "redis":
        from redis_server import redis_server

        with redis_server(tmp_path / "redis", password=uuid.uuid4().hex) as server:
            yield LocalStore(server.url(password=""), server.password, server.url())
    elif request.param == "s3":
        from s3_server import MotoServer, aws_env, client

        with MotoServer() as moto:
            client(moto.url).create_bucket(Bucket="examples")
            yield LocalStore("s3://examples/ciflow", extra=tuple(aws_env(moto.url).items()))
    else:
        raise AssertionError(f"no such store: {request.param}")


def expand(arg: str, env: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` from the job's variables, as the job's shell would."""
    expanded = string.Template(arg).safe_substitute(env)
    assert "$" not in expanded, f"{arg!r}: a variable the job does not have"
    return expanded


def local_argv(command: list[str], scripts: dict[str, Path]) -> list[str]:
    """The job's command on this machine: ``ciflow`` is this interpreter's ``-P -m ciflow``; a
    script the image holds (``python /opt/...``) is the example's file."""
    head, *rest = command
    if head == "ciflow":
        return [sys.executable, "-P", "-m", "ciflow", *rest]
    if head in ("python", "python3") and rest and rest[0] in scripts:
        return [sys.executable, str(scripts[rest[0]]), *local_argv(rest[1:], scripts)]
    raise AssertionError(f"cannot run {command} here")


def start(job: Job, flow: Flow, store: LocalStore, checkouts: Path) -> subprocess.Popen[str]:
    """Start ``job`` in its own checkout (the pipeline as ``ciflow.py``), with the job's
    variables and the test's store in place of the example's."""
    workdir = checkouts / job.name
    workdir.mkdir(parents=True)
    shutil.copy(PIPELINE, workdir / "ciflow.py")
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(FOREIGN) and k not in FOREIGN_NAMES
    }
    env = {**base, **job.env, **store.env_of(job)}
    command = [expand(arg, env) for arg in job.command]
    return subprocess.Popen(
        local_argv(command, flow.scripts), cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    """Wait for every process (killing all if one hangs); their exit codes and output."""
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outputs = "\n".join(p.communicate()[0] for p in procs)
        pytest.fail(f"a job did not end within {TIMEOUT}s:\n{outputs[-6000:]}")
    return [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]


@pytest.mark.parametrize("example", sorted(FLOWS))
def test_example_runs_locally_with_its_ci_variables(
    example: str, store: LocalStore, tmp_path: Path
) -> None:
    flow = FLOWS[example]()
    checkouts = tmp_path / "checkouts"
    plan = start(flow.plan, flow, store, checkouts)
    if not flow.plan_with_workers:
        ((code, out),) = finish([plan])
        assert code == 0, out
    workers = [start(job, flow, store, checkouts) for job in flow.workers]
    ran = finish([*workers, plan] if flow.plan_with_workers else workers)
    logs = "\n".join(out for _, out in ran)
    assert [code for code, _ in ran] == [0] * len(ran), logs[-6000:]
    slots = []
    for job, (_, out) in zip(flow.workers, ran, strict=False):
        (slot,) = re.findall(r"registered as \S+ \(slot (\d+),", out)
        assert job.slot is None or int(slot) == job.slot, (job.name, job.env, out)
        claimed = re.findall(r"claim-slot.py: \S+ serves slot (\d+)", out)  # compose's entrypoint
        assert claimed == ([] if job.slot is not None else [slot]), out
        slots.append(int(slot))
    assert sorted(slots) == list(range(len(flow.workers))), logs[-6000:]

    ((code, out),) = finish([start(flow.summary, flow, store, checkouts)])
    assert code == 0, out
    assert re.search(rf"^OK: {len(MODULES)} module\(s\): {len(MODULES)} succeeded", out, re.M), out
    for module in MODULES:
        assert re.search(rf"^\s+{module}\s+succeeded\s", out, re.M), out
    keys = RunKeys(flow.run_id)  # the run id each job derived from its CI's variables
    with pytest.MonkeyPatch.context() as mp:  # this process is a client of the store too
        for name, value in store.extra:
            mp.setenv(name, value)
        held = open_store(store.full or store.url)
        assert held.get(keys.plan) is not None
        assert len(held.list(keys.slots)) == len(flow.workers)
        held.close()
    if flow.report is not None:
        report = json.loads((checkouts / flow.summary.name / flow.report).read_text())
        assert report["exit_code"] == 0 and report["run_id"] == flow.run_id
        assert {m["name"]: m["outcome"] for m in report["modules"]} == dict.fromkeys(
            MODULES, "succeeded"
        )
