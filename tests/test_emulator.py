"""The GitHub Actions emulator: the official npm clients run against it, and its wire details."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from ciflow.testing.emulator import ARTIFACT_SERVICE, CACHE_SERVICE, Faults, GitHubEmulator

JS = Path(__file__).parent / "js"
RUN = "run-7"


@pytest.fixture
def emu() -> Iterator[GitHubEmulator]:
    """A fresh emulator on a free loopback port."""
    with GitHubEmulator() as emulator:
        yield emulator


def _node(script: str, steps: list[Any], env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """Run a tests/js script with a job's env; return its per-step results."""
    if not (JS / "node_modules").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `npm ci --prefix tests/js` first")
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: install Node.js 20+ and run `npm ci --prefix tests/js`")
    cwd.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "GITHUB_WORKSPACE": str(cwd), "RUNNER_TEMP": str(cwd / "_t")}
    proc = subprocess.run(
        [node, str(JS / script), json.dumps(steps)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    results: list[dict[str, Any]] = json.loads(lines[-1][len("RESULT ") :])
    return results


def _values(results: list[dict[str, Any]]) -> list[Any]:
    assert all(r["ok"] for r in results), results
    return [r["value"] for r in results]


def _rpc(
    emu: GitHubEmulator,
    method: str,
    body: dict[str, Any] | str,
    *,
    job: str = "job-a",
    token: str | None = None,
    service: str = ARTIFACT_SERVICE,
    timeout: float = 10,
) -> requests.Response:
    auth = token if token is not None else emu.token(RUN, job)
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(
        f"{emu.url}twirp/{service}/{method}",
        data=data,
        timeout=timeout,
        headers={"Authorization": f"Bearer {auth}", "Content-Type": "application/json"},
    )


def _ids(job: str = "job-a") -> dict[str, str]:
    return {"workflow_run_backend_id": RUN, "workflow_job_run_backend_id": job}


def _create(emu: GitHubEmulator, name: str, job: str = "job-a") -> str:
    resp = _rpc(emu, "CreateArtifact", {**_ids(job), "name": name, "version": 7}, job=job)
    assert resp.status_code == 200, resp.text
    url: str = resp.json()["signed_upload_url"]
    return url


def _put_blocks(url: str, blocks: list[tuple[str, bytes]], order: list[str]) -> None:
    for block_id, data in blocks:
        bid = base64.b64encode(block_id.encode()).decode()
        resp = requests.put(url, params={"comp": "block", "blockid": bid}, data=data, timeout=10)
        assert resp.status_code == 201, resp.text
    xml = "".join(f"<Latest>{base64.b64encode(b.encode()).decode()}</Latest>" for b in order)
    resp = requests.put(
        url,
        params={"comp": "blocklist"},
        timeout=10,
        data=f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>',
    )
    assert resp.status_code == 201, resp.text


def _finalize(emu: GitHubEmulator, name: str, data: bytes, job: str = "job-a") -> str:
    body = {
        **_ids(job),
        "name": name,
        "size": str(len(data)),
        "hash": "sha256:" + hashlib.sha256(data).hexdigest(),
    }
    resp = _rpc(emu, "FinalizeArtifact", body, job=job)
    assert resp.status_code == 200, resp.text
    art_id: str = resp.json()["artifact_id"]
    return art_id


def _list(emu: GitHubEmulator, job: str = "job-b", **filters: Any) -> list[dict[str, Any]]:
    resp = _rpc(emu, "ListArtifacts", {**_ids(job), **filters}, job=job)
    assert resp.status_code == 200, resp.text
    artifacts: list[dict[str, Any]] = resp.json()["artifacts"]
    return artifacts


# -- the official clients ------------------------------------------------------------------------
def test_official_artifact_client_upload_in_one_job_download_in_another(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "a"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_text("hello from job a\n")
    payload = os.urandom(300_000)
    (src / "sub" / "y.bin").write_bytes(payload)
    files = [str(src / "x.txt"), str(src / "sub" / "y.bin")]
    up = _node(
        "artifact.mjs",
        [["upload", "results", str(src), *files], ["upload", "results", str(src), files[0]]],
        emu.env(RUN, "job-a"),
        src,
    )
    assert up[0]["ok"] and up[0]["value"]["id"] >= 1 and len(up[0]["value"]["digest"]) == 64
    assert not up[1]["ok"] and "(409) Conflict" in up[1]["error"]

    dst = tmp_path / "b"
    listed, by_id, by_name, deleted, after = _values(
        _node(
            "artifact.mjs",
            [
                ["list"],
                ["download", str(up[0]["value"]["id"]), str(dst / "by-id")],
                ["download", "results", str(dst / "by-name")],
                ["delete", "results"],
                ["list"],
            ],
            emu.env(RUN, "job-b"),
            dst,
        )
    )
    assert [a["name"] for a in listed["artifacts"]] == ["results"]
    assert listed["artifacts"][0]["digest"] == "sha256:" + up[0]["value"]["digest"]
    assert not by_id["digestMismatch"] and not by_name["digestMismatch"]
    for folder in ("by-id", "by-name"):
        assert (dst / folder / "x.txt").read_text() == "hello from job a\n"
        assert (dst / folder / "sub" / "y.bin").read_bytes() == payload
    assert deleted["id"] == up[0]["value"]["id"] and after["artifacts"] == []
    assert emu.calls["CreateArtifact"] == 2 and emu.calls["FinalizeArtifact"] == 1


def test_official_cache_client_save_in_one_job_restore_in_another(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    payload = os.urandom(200_000)
    (a / "data" / "blob.bin").write_bytes(payload)
    available, saved, again = _values(
        _node(
            "cache.mjs",
            [
                {"op": "available"},
                {"op": "save", "key": "deps-1", "paths": ["data"]},
                {"op": "save", "key": "deps-1", "paths": ["data"]},
            ],
            emu.env(RUN, "job-a"),
            a,
        )
    )
    assert available is True and saved > 0 and again == -1  # the second save: 409, not saved
    exact, prefix, miss = _values(
        _node(
            "cache.mjs",
            [
                {"op": "restore", "key": "deps-1", "paths": ["data"]},
                {"op": "restore", "key": "deps-2", "restoreKeys": ["deps-"], "paths": ["data"]},
                {"op": "restore", "key": "other", "paths": ["data"]},
            ],
            emu.env(RUN, "job-b"),
            b,
        )
    )
    assert (exact, prefix, miss) == ("deps-1", "deps-1", None)
    assert (b / "data" / "blob.bin").read_bytes() == payload
    assert emu.calls["CreateCacheEntry"] == 2 and emu.calls["GetCacheEntryDownloadURL"] == 3


def test_azure_sdk_blocks_single_put_properties_and_ranges(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "payload.bin"
    src.write_bytes(data)
    blocks_url, stream_url = _create(emu, "blocks"), _create(emu, "stream")
    resp = _rpc(emu, "CreateCacheEntry", {"key": "k", "version": "v"}, service=CACHE_SERVICE)
    single_url = resp.json()["signed_upload_url"]
    ups = _values(
        _node(
            "blob.mjs",
            [
                ["uploadFile", blocks_url, str(src), 65_536, 65_536],
                ["uploadStream", stream_url, str(src), 100_000],
                ["uploadFile", single_url, str(src), 65_536, 1 << 20],
            ],
            {},
            tmp_path,
        )
    )
    assert all(u["status"] == 201 and u["etag"] for u in ups)
    calls = emu.blob_calls
    assert calls["PutBlock"] == 5 + 3 and calls["PutBlockList"] == 2 and calls["PutBlob"] == 1

    _finalize(emu, "blocks", data)
    _finalize(emu, "stream", data)
    resp = _rpc(
        emu,
        "FinalizeCacheEntryUpload",
        {"key": "k", "version": "v", "sizeBytes": len(data)},
        service=CACHE_SERVICE,
    )
    assert resp.json()["ok"] is True
    urls = [
        _rpc(emu, "GetSignedArtifactURL", {**_ids(), "name": n}).json()["signed_url"]
        for n in ("blocks", "stream")
    ]
    resp = _rpc(
        emu, "GetCacheEntryDownloadURL", {"key": "k", "version": "v"}, service=CACHE_SERVICE
    )
    urls.append(resp.json()["signed_download_url"])
    steps: list[list[Any]] = []
    for url in urls:
        steps += [["properties", url], ["download", url, 40_000], ["range", url, 10, 20]]
    got = _values(_node("blob.mjs", steps, {}, tmp_path))
    for props, full, part in zip(got[0::3], got[1::3], got[2::3], strict=True):
        assert props["contentLength"] == len(data) and props["blobType"] == "BlockBlob"
        assert full == {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert part["status"] == 206 and bytes.fromhex(part["hex"]) == data[10:30]
    assert got[0]["contentType"] == "application/zip"


# -- Twirp wire details --------------------------------------------------------------------------
def test_duplicate_name_is_409_across_jobs_even_unfinalized(emu: GitHubEmulator) -> None:
    _create(emu, "claim")
    resp = _rpc(emu, "CreateArtifact", {**_ids("job-b"), "name": "claim"}, job="job-b")
    assert resp.status_code == 409
    assert resp.json() == {
        "code": "already_exists",
        "msg": "an artifact with this name already exists on the workflow run",
    }
    assert _list(emu) == []  # unfinalized artifacts are not listed


def test_concurrent_creates_have_one_winner(emu: GitHubEmulator) -> None:
    def create(i: int) -> int:
        job = f"job-{i}"
        return _rpc(emu, "CreateArtifact", {**_ids(job), "name": "race"}, job=job).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = sorted(pool.map(create, range(16)))
    assert codes == [200] + [409] * 15
    assert emu.calls["CreateArtifact"] == 16


def test_camel_and_snake_case_requests_snake_case_answers(emu: GitHubEmulator) -> None:
    resp = _rpc(
        emu,
        "CreateArtifact",
        {
            "workflowRunBackendId": RUN,
            "workflowJobRunBackendId": "job-a",
            "name": "camel",
            "mimeType": "application/zip",
            "version": 7,
        },
    )
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    assert set(resp.json()) == {"ok", "signed_upload_url"}
    _put_blocks(resp.json()["signed_upload_url"], [("b1", b"xyz")], ["b1"])
    resp = _rpc(
        emu,
        "FinalizeArtifact",
        {
            "workflowRunBackendId": RUN,
            "workflowJobRunBackendId": "job-a",
            "name": "camel",
            "size": 3,
        },
    )
    assert resp.json() == {"ok": True, "artifact_id": "1"}  # int64 as a string, as protojson
    [art] = _list(emu)
    assert set(art) == {
        "workflow_run_backend_id",
        "workflow_job_run_backend_id",
        "database_id",
        "name",
        "size",
        "created_at",
    }
    assert (art["database_id"], art["size"], art["workflow_job_run_backend_id"]) == (
        "1",
        "3",
        "job-a",
    )
    assert art["created_at"].endswith("Z")


def test_list_filters_by_name_and_id(emu: GitHubEmulator) -> None:
    for i, name in enumerate(["one", "two", "three"]):
        job = f"job-{i}"
        _put_blocks(_create(emu, name, job), [("b", name.encode())], ["b"])
        _finalize(emu, name, name.encode(), job)
    assert [a["name"] for a in _list(emu)] == ["one", "two", "three"]  # every job's artifacts
    assert [a["name"] for a in _list(emu, name_filter="two")] == ["two"]
    assert [a["name"] for a in _list(emu, nameFilter={"value": "three"})] == ["three"]
    assert [a["name"] for a in _list(emu, id_filter="1")] == ["one"]
    assert _list(emu, id_filter=99) == [] and _list(emu, name_filter="none") == []


@pytest.mark.parametrize("bad", list('":<>|*?\\/') + ["\r", "\n"])
def test_invalid_artifact_names(emu: GitHubEmulator, bad: str) -> None:
    resp = _rpc(emu, "CreateArtifact", {**_ids(), "name": f"a{bad}b"})
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_argument"


def test_errors_are_twirp_json(emu: GitHubEmulator) -> None:
    cases = [
        (_rpc(emu, "Nope", {}), 404, "bad_route"),
        (_rpc(emu, "ListArtifacts", "{not json"), 400, "malformed"),
        (_rpc(emu, "ListArtifacts", {"workflow_run_backend_id": RUN}), 400, "invalid_argument"),
        (
            _rpc(emu, "ListArtifacts", {**_ids(), "workflow_run_backend_id": "other"}),
            403,
            "permission_denied",
        ),
        (_rpc(emu, "CreateArtifact", {**_ids("job-b"), "name": "x"}), 403, "permission_denied"),
        (_rpc(emu, "FinalizeArtifact", {**_ids(), "name": "ghost", "size": "1"}), 404, "not_found"),
        (_rpc(emu, "GetSignedArtifactURL", {**_ids(), "name": "ghost"}), 404, "not_found"),
        (_rpc(emu, "DeleteArtifact", {**_ids(), "name": "ghost"}), 404, "not_found"),
        (_rpc(emu, "ListArtifacts", {**_ids(), "id_filter": "abc"}), 400, "malformed"),
    ]
    for resp, status, code in cases:
        assert (resp.status_code, resp.json()["code"]) == (status, code), resp.text
        assert isinstance(resp.json()["msg"], str)
    resp = requests.post(
        f"{emu.url}twirp/{ARTIFACT_SERVICE}/ListArtifacts",
        data="{}",
        headers={
            "Authorization": f"Bearer {emu.token(RUN, 'j')}",
            "Content-Type": "application/protobuf",
        },
        timeout=10,
    )
    assert resp.status_code == 404 and resp.json()["code"] == "bad_route"


def test_bad_or_missing_token_is_401(emu: GitHubEmulator) -> None:
    with GitHubEmulator() as other:
        foreign = other.token(RUN, "job-a")
    head, body, sig = emu.token(RUN, "job-a").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["scp"] = "Actions.Results:other-run:job-a"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    for token in ["", "not-a-jwt", foreign, f"{head}.{forged}.{sig}"]:
        resp = _rpc(emu, "ListArtifacts", _ids(), token=token)
        assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"
    resp = requests.post(
        f"{emu.url}twirp/{ARTIFACT_SERVICE}/ListArtifacts", json=_ids(), timeout=10
    )
    assert resp.status_code == 401 and resp.json()["code"] == "unauthenticated"


def test_token_and_env_match_the_official_clients_expectations(emu: GitHubEmulator) -> None:
    env = emu.env(RUN, "job-a")
    assert env["ACTIONS_RESULTS_URL"] == emu.url and env["ACTIONS_CACHE_SERVICE_V2"]
    assert env["GITHUB_SERVER_URL"] == "https://github.com"  # not GHES for the clients
    claims = json.loads(base64.urlsafe_b64decode(env["ACTIONS_RUNTIME_TOKEN"].split(".")[1] + "=="))
    assert f"Actions.Results:{RUN}:job-a" in claims["scp"].split()
    with pytest.raises(ValueError):
        emu.token("run:1", "job")


def test_delete_frees_the_name(emu: GitHubEmulator) -> None:
    _put_blocks(_create(emu, "tmp"), [("b", b"1")], ["b"])
    first = _finalize(emu, "tmp", b"1")
    resp = _rpc(emu, "DeleteArtifact", {**_ids("job-b"), "name": "tmp"}, job="job-b")
    assert resp.status_code == 404  # the official client sends the artifact's own job id
    resp = _rpc(
        emu, "DeleteArtifact", {**_ids(), "name": "tmp"}, job="job-b", token=emu.token(RUN, "job-b")
    )
    assert resp.json() == {"ok": True, "artifact_id": first}
    assert _list(emu) == []
    _put_blocks(_create(emu, "tmp"), [("b", b"2")], ["b"])
    assert _finalize(emu, "tmp", b"2") != first


def test_artifact_limit_counts_creations_per_job_deleted_ones_too(emu: GitHubEmulator) -> None:
    emu.artifact_limit = 2
    _put_blocks(_create(emu, "a1"), [("b", b"1")], ["b"])
    _finalize(emu, "a1", b"1")
    assert _rpc(emu, "DeleteArtifact", {**_ids(), "name": "a1"}).status_code == 200
    _create(emu, "a2")
    resp = _rpc(emu, "CreateArtifact", {**_ids(), "name": "a3"})
    assert resp.status_code == 412 and resp.json()["code"] == "failed_precondition"
    assert "limit of 2 artifacts" in resp.json()["msg"]
    assert emu.creations(RUN, "job-a") == 2
    _create(emu, "b1", job="job-b")  # another job has its own budget
    # a refused create (a 409) is no creation
    assert (
        _rpc(emu, "CreateArtifact", {**_ids("job-b"), "name": "a2"}, job="job-b").status_code == 409
    )
    assert emu.creations(RUN, "job-b") == 1


def test_version_mime_type_and_expiry_are_recorded(emu: GitHubEmulator) -> None:
    stamp = "2099-01-01T00:00:00.5Z"
    emu.clock_offset = _epoch(stamp) - time.time() - 3 * 86400  # "now" is 3 days before
    body = {
        **_ids(),
        "name": "r",
        "version": 7,
        "mime_type": "application/zip",
        "expires_at": stamp,
    }
    assert _rpc(emu, "CreateArtifact", body).status_code == 200
    _rpc(emu, "CreateArtifact", {**_ids(), "name": "old", "version": 4})
    by_name = {a["name"]: a for a in emu.artifacts(RUN)}
    assert (by_name["r"]["version"], by_name["r"]["mime_type"]) == (7, "application/zip")
    assert by_name["r"]["expires_at"] == "2099-01-01T00:00:00.500000Z"
    assert by_name["old"]["mime_type"] is None  # none sent: the repository's 90 days
    assert _epoch(by_name["old"]["expires_at"]) - emu._now() == pytest.approx(90 * 86400, abs=5)


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("days", [0.5, 91, -1])
def test_retention_outside_1_to_90_days_is_invalid_argument(
    emu: GitHubEmulator, days: float
) -> None:
    from datetime import UTC, datetime, timedelta

    when = datetime.now(UTC) + timedelta(days=days)
    body = {**_ids(), "name": "r", "expires_at": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
    resp = _rpc(emu, "CreateArtifact", body)
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_argument"
    assert "between 1 and 90 days" in resp.json()["msg"] and emu.creations(RUN, "job-a") == 0


def test_expired_artifacts_are_gone(emu: GitHubEmulator) -> None:
    from datetime import UTC, datetime, timedelta

    when = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    url = _rpc(emu, "CreateArtifact", {**_ids(), "name": "e", "expires_at": when}).json()
    _put_blocks(url["signed_upload_url"], [("b", b"1")], ["b"])
    _finalize(emu, "e", b"1")
    assert [a["name"] for a in _list(emu)] == ["e"]
    emu.advance(86400 + 60)
    assert _list(emu) == [] and _list(emu, name_filter="e") == []
    assert _rpc(emu, "GetSignedArtifactURL", {**_ids(), "name": "e"}).status_code == 404
    _create(emu, "e")  # the name is free again


def test_unfinalized_artifacts_under_each_setting(emu: GitHubEmulator) -> None:
    _create(emu, "held")  # never finalized
    assert _list(emu) == [] and _list(emu, name_filter="held") == []
    emu.unfinalized_listed = True
    [art] = _list(emu)
    assert (art["name"], art["size"], "digest" in art) == ("held", "0", False)
    emu.unfinalized_reserves_name = False
    url = _create(emu, "held", job="job-b")  # the name is free until finalized
    _put_blocks(url, [("b", b"b")], ["b"])
    _finalize(emu, "held", b"b", job="job-b")
    resp = _rpc(emu, "FinalizeArtifact", {**_ids(), "name": "held", "size": "0"})
    assert resp.status_code in (404, 409)  # nothing uploaded, and the name is taken now
    assert _rpc(emu, "CreateArtifact", {**_ids(), "name": "held"}).status_code == 409
    emu.unfinalized_deletable = False
    _create(emu, "other")
    assert _rpc(emu, "DeleteArtifact", {**_ids(), "name": "other"}).status_code == 404
    emu.unfinalized_deletable = True
    assert _rpc(emu, "DeleteArtifact", {**_ids(), "name": "other"}).status_code == 200


def test_a_list_limit_answers_the_newest_artifacts_and_lookups_whole(
    emu: GitHubEmulator,
) -> None:
    for i in range(6):
        _put_blocks(_create(emu, f"n{i}"), [("b", b"x")], ["b"])
        _finalize(emu, f"n{i}", b"x")
    emu.list_limit = 10
    assert len(_list(emu)) == 6
    emu.list_limit = 4
    assert [a["name"] for a in _list(emu)] == ["n2", "n3", "n4", "n5"]
    assert [a["name"] for a in _list(emu, name_filter="n0")] == ["n0"]
    emu.list_limit = 0
    assert _list(emu) == []


@pytest.mark.parametrize("across", [False, True])
def test_artifacts_of_earlier_attempts(emu: GitHubEmulator, across: bool) -> None:
    emu.artifacts_across_attempts = across
    _put_blocks(_create(emu, "first"), [("b", b"1")], ["b"])
    _finalize(emu, "first", b"1")
    token = emu.token(RUN, "job-a", attempt=2)
    second = {"workflow_run_backend_id": f"{RUN}-attempt2", "workflow_job_run_backend_id": "job-a"}
    listed = _rpc(emu, "ListArtifacts", second, token=token).json()["artifacts"]
    assert [a["name"] for a in listed] == (["first"] if across else [])
    url = _rpc(emu, "GetSignedArtifactURL", {**second, "name": "first"}, token=token)
    assert url.status_code == (200 if across else 404)
    again = _rpc(emu, "CreateArtifact", {**second, "name": "first"}, token=token)
    assert again.status_code == (409 if across else 200)


def test_storage_quota_flag(emu: GitHubEmulator) -> None:
    emu.storage_quota_hit = True
    resp = _rpc(emu, "CreateArtifact", {**_ids(), "name": "q"})
    assert resp.status_code == 429 and "insufficient usage" in resp.json()["msg"]
    assert emu.creations(RUN, "job-a") == 0


def test_official_client_sends_version_7_and_mime_type(emu: GitHubEmulator, tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.mkdir()
    (src / "x.txt").write_text("x\n")
    up = _node("artifact.mjs", [["upload", "v7", str(src), str(src / "x.txt")]],
               emu.env(RUN, "job-a"), src)  # fmt: skip
    assert up[0]["ok"], up
    [art] = emu.artifacts(RUN)
    assert (art["version"], art["mime_type"], art["finalized"]) == (7, "application/zip", True)


# -- blobs ---------------------------------------------------------------------------------------
def test_block_list_order_wins_and_uncommitted_blocks_are_discarded(emu: GitHubEmulator) -> None:
    url = _create(emu, "ordered")
    _put_blocks(url, [("b1", b"AAA"), ("b2", b"BBB"), ("b3", b"CCC")], ["b2", "b1"])
    resp = requests.put(
        url,
        params={"comp": "blocklist"},
        timeout=10,
        data="<BlockList><Latest>YjM=</Latest></BlockList>",
    )  # b3: discarded
    assert resp.status_code == 400 and resp.headers["x-ms-error-code"] == "InvalidBlockList"
    assert b"<Code>InvalidBlockList</Code>" in resp.content
    resp = requests.put(
        url,
        params={"comp": "blocklist"},
        timeout=10,
        data="<BlockList><Committed>YjE=</Committed><Latest>YjI=</Latest></BlockList>",
    )  # blocks of the committed list can be reused
    assert resp.status_code == 201
    resp = _rpc(emu, "FinalizeArtifact", {**_ids(), "name": "ordered", "size": "5"})
    assert resp.status_code == 400 and "size" in resp.json()["msg"]
    resp = _rpc(
        emu,
        "FinalizeArtifact",
        {**_ids(), "name": "ordered", "size": "6", "hash": "sha256:" + "0" * 64},
    )
    assert resp.status_code == 400 and "hash" in resp.json()["msg"]
    _finalize(emu, "ordered", b"AAABBB")
    resp = requests.put(url, headers={"x-ms-blob-type": "BlockBlob"}, data=b"late", timeout=10)
    assert resp.status_code == 409  # finalized: immutable
    get_url = _rpc(emu, "GetSignedArtifactURL", {**_ids(), "name": "ordered"}).json()["signed_url"]
    resp = requests.get(get_url, timeout=10)
    assert resp.status_code == 200 and resp.content == b"AAABBB"
    assert 'filename="ordered.zip"' in resp.headers["Content-Disposition"]
    resp = requests.get(get_url, headers={"Range": "bytes=2-3"}, timeout=10)
    assert (resp.status_code, resp.content, resp.headers["Content-Range"]) == (
        206,
        b"AB",
        "bytes 2-3/6",
    )
    resp = requests.get(get_url, headers={"x-ms-range": "bytes=4-"}, timeout=10)
    assert (resp.status_code, resp.content) == (206, b"BB")
    resp = requests.get(get_url, headers={"Range": "bytes=9-"}, timeout=10)
    assert resp.status_code == 416
    head = requests.head(get_url, timeout=10)
    assert head.status_code == 200 and head.headers["Content-Length"] == "6"
    for name in ("ETag", "Last-Modified", "x-ms-request-id", "x-ms-version"):
        assert head.headers[name]
    assert head.headers["x-ms-blob-type"] == "BlockBlob"


def test_single_put_and_signatures(emu: GitHubEmulator) -> None:
    url = _create(emu, "single")
    resp = requests.put(url, data=b"no type header", timeout=10)
    assert resp.status_code == 400 and resp.headers["x-ms-error-code"] == "MissingRequiredHeader"
    resp = requests.put(
        url.replace("sig=", "sig=0"), data=b"x", timeout=10, headers={"x-ms-blob-type": "BlockBlob"}
    )
    assert resp.status_code == 403 and resp.headers["x-ms-error-code"] == "AuthenticationFailed"
    resp = requests.put(url, data=b"whole", timeout=10, headers={"x-ms-blob-type": "BlockBlob"})
    assert resp.status_code == 201 and resp.headers["ETag"]
    assert requests.get(url, timeout=10).status_code == 403  # an upload URL cannot read
    _finalize(emu, "single", b"whole")
    get_url = _rpc(emu, "GetSignedArtifactURL", {**_ids(), "name": "single"}).json()["signed_url"]
    assert requests.get(get_url, timeout=10).content == b"whole"
    resp = requests.put(get_url, data=b"x", timeout=10, headers={"x-ms-blob-type": "BlockBlob"})
    assert resp.status_code == 403  # a download URL cannot write


# -- cache service -------------------------------------------------------------------------------
def _save(
    emu: GitHubEmulator, key: str, version: str, data: bytes, token: str | None = None
) -> None:
    body = {"key": key, "version": version}
    resp = _rpc(emu, "CreateCacheEntry", body, service=CACHE_SERVICE, token=token)
    assert resp.status_code == 200, resp.text
    requests.put(
        resp.json()["signed_upload_url"],
        data=data,
        timeout=10,
        headers={"x-ms-blob-type": "BlockBlob"},
    ).raise_for_status()
    resp = _rpc(
        emu,
        "FinalizeCacheEntryUpload",
        {"key": key, "version": version, "size_bytes": str(len(data))},
        service=CACHE_SERVICE,
        token=token,
    )
    assert resp.json()["ok"] is True and int(resp.json()["entry_id"]) > 0


def test_cache_immutability_and_restore_key_order(emu: GitHubEmulator) -> None:
    resp = _rpc(emu, "CreateCacheEntry", {"key": "pending", "version": "v1"}, service=CACHE_SERVICE)
    assert resp.status_code == 200
    resp = _rpc(
        emu,
        "CreateCacheEntry",
        {"key": "pending", "version": "v1"},
        service=CACHE_SERVICE,
        job="job-b",
    )
    assert resp.status_code == 409 and resp.json() == {
        "code": "already_exists",
        "msg": "cache entry with the same key, version, and scope already exists",
    }
    _save(emu, "deps-linux-old", "v1", b"old")
    again = {"key": "deps-linux-old", "version": "v1", "size_bytes": "3"}
    resp = _rpc(emu, "FinalizeCacheEntryUpload", again, service=CACHE_SERVICE)
    assert resp.status_code == 200  # a retried finalize succeeds again
    resp = _rpc(
        emu, "FinalizeCacheEntryUpload", {**again, "size_bytes": "4"}, service=CACHE_SERVICE
    )
    assert resp.status_code == 412 and resp.json()["code"] == "failed_precondition"
    _save(emu, "deps-linux-new", "v1", b"new")
    _save(emu, "deps-linux-new", "v2", b"other version")

    def lookup(key: str, restore: list[str], version: str = "v1") -> dict[str, Any]:
        body = {"key": key, "restoreKeys": restore, "version": version}
        result: dict[str, Any] = _rpc(
            emu, "GetCacheEntryDownloadURL", body, service=CACHE_SERVICE
        ).json()
        return result

    assert lookup("deps-linux-old", [])["matched_key"] == "deps-linux-old"  # exact
    assert lookup("deps-linux-x", ["nope", "deps-"])["matched_key"] == "deps-linux-new"  # newest
    assert lookup("deps-linux-new", [], version="v3") == {
        "ok": False,
        "signed_download_url": "",
        "matched_key": "",
    }
    hit = lookup("deps-", [], version="v2")
    assert requests.get(hit["signed_download_url"], timeout=10).content == b"other version"


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return claims


def test_tokens_carry_the_jobs_cache_scopes(emu: GitHubEmulator) -> None:
    def access(**refs: str) -> list[dict[str, Any]]:
        scopes: list[dict[str, Any]] = json.loads(_claims(emu.token(RUN, "j", **refs))["ac"])
        return scopes

    main, feature = {"Scope": "refs/heads/main", "Permission": 3}, "refs/heads/feature"
    assert access() == access(ref="main") == [main]
    assert access(ref="feature") == [{"Scope": feature, "Permission": 3}, {**main, "Permission": 1}]
    assert access(ref="refs/pull/7/merge", base_ref="feature") == [
        {"Scope": "refs/pull/7/merge", "Permission": 3},
        {"Scope": feature, "Permission": 1},
        {**main, "Permission": 1},
    ]
    env = emu.env(RUN, "j", ref="refs/pull/7/merge", base_ref="feature")
    assert (env["GITHUB_REF"], env["GITHUB_REF_NAME"], env["GITHUB_BASE_REF"]) == (
        "refs/pull/7/merge", "7/merge", "feature",
    )  # fmt: skip
    assert "GITHUB_REF" not in emu.env(RUN, "j")  # the default job names no ref, as before
    with GitHubEmulator(default_branch="trunk") as other:
        assert json.loads(_claims(other.token(RUN, "j", ref="x"))["ac"])[1] == {
            "Scope": "refs/heads/trunk", "Permission": 1,
        }  # fmt: skip
    with pytest.raises(ValueError):
        emu.token(RUN, "j", ref="bad ref")


def _lookup(emu: GitHubEmulator, token: str, key: str, restore: list[str]) -> dict[str, Any]:
    body = {"key": key, "restore_keys": restore, "version": "v1"}
    resp = _rpc(emu, "GetCacheEntryDownloadURL", body, service=CACHE_SERVICE, token=token)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def test_cache_lookups_search_the_own_branch_then_the_default(emu: GitHubEmulator) -> None:
    main, feature = emu.token(RUN, "m"), emu.token(RUN, "f", ref="feature")
    pull = emu.token(RUN, "p", ref="refs/pull/3/merge", base_ref="feature")
    _save(emu, "deps-feature-old", "v1", b"f", token=feature)
    _save(emu, "deps-main-new", "v1", b"m", token=main)
    _save(emu, "only-main", "v1", b"m", token=main)
    _save(emu, "only-feature", "v1", b"f", token=feature)
    _save(emu, "same", "v1", b"m", token=main)
    _save(emu, "same", "v1", b"f", token=feature)  # the same key on another branch

    def matched(token: str, key: str, *restore: str) -> str:
        return str(_lookup(emu, token, key, list(restore))["matched_key"])

    assert matched(feature, "x", "deps-") == "deps-feature-old"  # own branch first, though older
    assert matched(main, "x", "deps-") == "deps-main-new"
    assert matched(feature, "only-main") == "only-main"  # then the default branch
    assert matched(main, "only-feature") == ""  # the default branch sees no feature entries
    assert matched(pull, "only-feature") == "only-feature"  # a pull request reads its base
    assert matched(pull, "x", "nope-", "only-") == "only-feature"  # base before default
    for token, data in ((main, b"m"), (feature, b"f"), (pull, b"f")):
        url = _lookup(emu, token, "same", [])["signed_download_url"]
        assert requests.get(url, timeout=10).content == data  # the first scope that has it
    again = {"key": "only-main", "version": "v1"}  # a main key is free on the feature branch
    assert _rpc(emu, "CreateCacheEntry", again, service=CACHE_SERVICE, token=feature).json()["ok"]


def test_prefix_lookups_return_the_newest_exact_first(emu: GitHubEmulator) -> None:
    token = emu.token(RUN, "j")
    for key in ("h-1", "h-3", "h-2", "h"):
        _save(emu, key, "v1", key.encode(), token=token)
    assert _lookup(emu, token, "none", ["h-"])["matched_key"] == "h-2"  # created last
    assert _lookup(emu, token, "none", ["h"])["matched_key"] == "h"  # an exact match first
    assert _lookup(emu, token, "h-", [])["matched_key"] == "h-2"  # the key prefix-matches too


def test_require_restore_keys(emu: GitHubEmulator, tmp_path: Path) -> None:
    token = emu.token(RUN, "j")
    _save(emu, "k-1", "v1", b"v", token=token)
    assert _lookup(emu, token, "k-1", [])["matched_key"] == "k-1"  # off by default
    emu.require_restore_keys = True
    assert _lookup(emu, token, "k-1", [])["ok"] is False  # even an exact key misses
    assert _lookup(emu, token, "k-1", ["k-1"])["matched_key"] == "k-1"
    (tmp_path / "a" / "d").mkdir(parents=True)
    (tmp_path / "a" / "d" / "f").write_text("x")
    env = emu.env(RUN, "job-a")
    save = [{"op": "save", "key": "t-1", "paths": ["d"]}]
    assert _values(_node("cache.mjs", save, env, tmp_path / "a"))[0] > 0
    steps = [
        {"op": "restore", "key": "t-1", "paths": ["d"]},  # the official client sends none
        {"op": "restore", "key": "t-1", "restoreKeys": ["t-1"], "paths": ["d"]},
    ]
    assert _values(_node("cache.mjs", steps, env, tmp_path / "b")) == [None, "t-1"]


def test_official_cache_client_across_branches(emu: GitHubEmulator, tmp_path: Path) -> None:
    (tmp_path / "src" / "d").mkdir(parents=True)
    (tmp_path / "src" / "d" / "f").write_text("feature")
    save = [{"op": "save", "key": "b-1", "paths": ["d"]}]
    assert _values(_node("cache.mjs", save, emu.env(RUN, "f", ref="feature"), tmp_path / "src"))
    restore = [{"op": "restore", "key": "b-1", "paths": ["d"]}]
    got = {
        ref: _values(_node("cache.mjs", restore, emu.env(RUN, ref, ref=ref), tmp_path / ref))[0]
        for ref in ("feature", "main", "other")
    }
    assert got == {"feature": "b-1", "main": None, "other": None}
    assert (tmp_path / "feature" / "d" / "f").read_text() == "feature"


# -- faults --------------------------------------------------------------------------------------
def test_fault_429_carries_retry_after(emu: GitHubEmulator) -> None:
    emu.faults = Faults(rate=1.0, kinds={"429"}, retry_after=7)
    resp = _rpc(emu, "ListArtifacts", _ids())
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
    assert resp.json()["code"] == "resource_exhausted"
    assert emu.calls == {"ListArtifacts": 1}
    url = _create_without_faults(emu, "blob-ok")
    assert (
        requests.put(
            url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10
        ).status_code
        == 201
    )  # blobs unaffected unless asked
    emu.faults = Faults(rate=1.0, kinds={"503"}, blobs=True)
    resp = requests.put(url, data=b"x", headers={"x-ms-blob-type": "BlockBlob"}, timeout=10)
    assert resp.status_code == 503 and resp.headers["x-ms-error-code"] == "ServerBusy"


def _create_without_faults(emu: GitHubEmulator, name: str) -> str:
    saved, emu.faults = emu.faults, Faults()
    try:
        return _create(emu, name)
    finally:
        emu.faults = saved


def test_fault_drop_closes_the_connection_without_applying(emu: GitHubEmulator) -> None:
    emu.faults = Faults(rate=1.0, kinds={"drop"})
    with pytest.raises(requests.ConnectionError):
        _rpc(emu, "CreateArtifact", {**_ids(), "name": "dropped"})
    emu.faults = Faults(rate=1.0, kinds={"drop_after"})
    with pytest.raises(requests.ConnectionError):
        _rpc(emu, "CreateArtifact", {**_ids(), "name": "applied"})
    emu.faults = Faults()
    _create(emu, "dropped")  # the dropped call changed nothing
    assert _rpc(emu, "CreateArtifact", {**_ids(), "name": "applied"}).status_code == 409


def test_fault_latency_and_method_filter(emu: GitHubEmulator) -> None:
    emu.faults = Faults(latency=0.3, rate=1.0, kinds={"500"}, methods={"FinalizeArtifact"})
    start = time.monotonic()
    assert _rpc(emu, "ListArtifacts", _ids()).status_code == 200
    assert time.monotonic() - start >= 0.3
    resp = _rpc(emu, "FinalizeArtifact", {**_ids(), "name": "x", "size": "1"})
    assert resp.status_code == 500 and resp.json()["code"] == "internal"


def test_faults_are_deterministic_with_a_seed(emu: GitHubEmulator) -> None:
    def statuses() -> list[int]:
        emu.faults = Faults(rate=0.5, kinds={"500", "503"}, seed=42)
        return [_rpc(emu, "ListArtifacts", _ids()).status_code for _ in range(12)]

    first = statuses()
    assert first == statuses() and len(set(first)) > 1
    with pytest.raises(ValueError):
        Faults(kinds={"418"})


# -- CLI -----------------------------------------------------------------------------------------
def test_cli_prints_exports_and_serves_until_interrupted(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ciflow.testing.emulator",
            "--run-id",
            "r1",
            "--job-id",
            "j1",
            "--job-id",
            "j2",
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        while "GITHUB_JOB" not in env:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                env[name] = value.strip("'")
        resp = requests.post(
            f"{env['ACTIONS_RESULTS_URL']}twirp/{ARTIFACT_SERVICE}/ListArtifacts",
            timeout=10,
            json={"workflow_run_backend_id": "r1", "workflow_job_run_backend_id": "j1"},
            headers={"Authorization": f"Bearer {env['ACTIONS_RUNTIME_TOKEN']}"},
        )
        assert resp.json() == {"artifacts": []}
        second = proc.stdout.readline()
        assert (
            second.startswith("# job j2: export ACTIONS_RUNTIME_TOKEN=")
            and "GITHUB_JOB=j2" in second
        )
        jobs = requests.get(
            f"{env['GITHUB_API_URL']}repos/{env['GITHUB_REPOSITORY']}/actions/runs/r1/attempts/1/jobs",
            headers={"Authorization": f"Bearer {env['GITHUB_TOKEN']}"},
            timeout=10,
        ).json()
        ids = {str(j["id"]): j["name"] for j in jobs["jobs"]}
        assert ids[env["CIFLOW_JOB_ID"]] == "j1" and "j2" in ids.values()
        assert f"CIFLOW_JOB_ID={[k for k, v in ids.items() if v == 'j2'][0]}" in second
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cli_stopped_by_sigterm_or_sighup_removes_its_folder(sig: int, tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow.testing.emulator"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    while "serving" not in (line := proc.stderr.readline()):
        assert line, "the emulator ended before serving"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("ciflow-emulator-")]
    proc.send_signal(sig)
    proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ciflow-emulator-")]


def test_cli_branch_options(tmp_path: Path) -> None:
    args = ["--ref", "feature", "--default-branch", "trunk", "--require-restore-keys"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow.testing.emulator", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        while "GITHUB_JOB" not in env:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = value.strip("'")
        assert (env["GITHUB_REF"], env["GITHUB_REF_NAME"]) == ("refs/heads/feature", "feature")
        assert json.loads(_claims(env["ACTIONS_RUNTIME_TOKEN"])["ac"]) == [
            {"Scope": "refs/heads/feature", "Permission": 3},
            {"Scope": "refs/heads/trunk", "Permission": 1},
        ]
        base = f"{env['ACTIONS_RESULTS_URL']}twirp/{CACHE_SERVICE}/"
        headers = {"Authorization": f"Bearer {env['ACTIONS_RUNTIME_TOKEN']}"}

        def call(method: str, **body: Any) -> dict[str, Any]:
            resp = requests.post(base + method, json=body, headers=headers, timeout=10)
            assert resp.status_code == 200, resp.text
            answer: dict[str, Any] = resp.json()
            return answer

        upload = call("CreateCacheEntry", key="k", version="v")["signed_upload_url"]
        put = {"x-ms-blob-type": "BlockBlob"}
        requests.put(upload, data=b"x", headers=put, timeout=10).raise_for_status()
        assert call("FinalizeCacheEntryUpload", key="k", version="v", size_bytes="1")["ok"]
        assert (
            call("GetCacheEntryDownloadURL", key="k", restore_keys=[], version="v")["ok"] is False
        )
        hit = call("GetCacheEntryDownloadURL", key="k", restore_keys=["k"], version="v")
        assert hit["matched_key"] == "k"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_cli_artifact_behaviour_flags() -> None:
    from ciflow.testing.emulator.cli import _configure, _parser

    flags = ["--unfinalized-frees-name", "--unfinalized-undeletable", "--unfinalized-listed",
             "--list-limit", "3", "--artifacts-across-attempts", "--artifact-limit", "7",
             "--storage-quota-hit"]  # fmt: skip
    emu, default = GitHubEmulator(), GitHubEmulator()
    _configure(emu, _parser().parse_args(flags))
    _configure(default, _parser().parse_args([]))
    names = [
        "unfinalized_reserves_name", "unfinalized_deletable", "unfinalized_listed", "list_limit",
        "artifacts_across_attempts", "artifact_limit", "storage_quota_hit",
    ]  # fmt: skip
    assert [getattr(emu, n) for n in names] == [False, False, True, 3, True, 7, True]
    assert [getattr(default, n) for n in names] == [True, True, False, None, False, 500, False]
    with pytest.raises(ValueError, match="--list-limit"):
        _configure(emu, _parser().parse_args(["--list-limit", "-1"]))


def test_cli_serves_the_storage_quota_error(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciflow.testing.emulator", "--run-id", "q", "--storage-quota-hit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        env: dict[str, str] = {}
        while "GITHUB_JOB" not in env:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = value.strip("'")
        resp = requests.post(
            f"{env['ACTIONS_RESULTS_URL']}twirp/{ARTIFACT_SERVICE}/CreateArtifact",
            json={"workflow_run_backend_id": "q", "workflow_job_run_backend_id": "local-job",
                  "name": "x", "version": 7},
            headers={"Authorization": f"Bearer {env['ACTIONS_RUNTIME_TOKEN']}"}, timeout=10,
        )  # fmt: skip
        assert resp.status_code == 429 and "insufficient usage" in resp.json()["msg"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
