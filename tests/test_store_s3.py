"""The s3:// store against a real S3 API server (moto's, `s3_server`): the contract, multipart
streaming, pagination, conditional writes and their probe, lost answers, credentials, a server
that is down or restarts, and distributed dry-runs through a bucket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from s3_server import MotoServer, Proxy, aws_env, client, process_env
from store_contract import MiB, StoreContract, file_sha256, write_blob

from ciflow.errors import UsageError
from ciflow.stores import Store, StoreError, StoreUnavailable, open_store
from ciflow.stores.base import StoreDenied, StoreFlaky
from ciflow.stores.s3 import WRITER, S3Store

BUCKET = "ciflow-tests"
PIPELINES = Path(__file__).parent / "pipelines"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server per test module, with the tests' bucket."""
    with MotoServer() as server:
        client(server.url).create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(autouse=True)
def _aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the tests' AWS settings: dummy credentials, a region, moto as the endpoint."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in aws_env(moto.url).items():
        monkeypatch.setenv(name, value)


def _fresh() -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"


def _no_sleep(_: float) -> None:
    return None


class TestS3StoreContract(StoreContract):
    """The contract, each test under a new prefix of one bucket, each client its own store."""

    blob_size = 64 * MiB  # a multipart upload of 8 parts

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        with open_store(_fresh()) as store:
            yield store

    def other_client(self, store: Store) -> Store:
        return S3Store(store.url)


# -- layout and interoperation ----------------------------------------------------------------


def test_keys_are_objects_under_the_prefix_and_plain_boto3_reads_them(
    moto: MotoServer, tmp_path: Path
) -> None:
    url = _fresh()
    prefix = url.rsplit("/", 1)[1]
    store = open_store(url)
    big = tmp_path / "big"
    sha = write_blob(big, 12 * MiB, seed=3)
    assert store.create("runs/r1/plan", b"the plan")
    assert store.create_from_file("runs/r1/outputs/build/1", big)  # 2 parts
    plain = client(moto.url)
    listed = plain.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"{prefix}/runs/r1/outputs/build/1",
        f"{prefix}/runs/r1/plan",
    ]  # and no probe key left behind
    assert plain.get_object(Bucket=BUCKET, Key=f"{prefix}/runs/r1/plan")["Body"].read() == (
        b"the plan"
    )
    answer = plain.get_object(Bucket=BUCKET, Key=f"{prefix}/runs/r1/outputs/build/1")
    assert answer["ContentLength"] == 12 * MiB and WRITER in answer["Metadata"]
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        for chunk in answer["Body"].iter_chunks(MiB):
            fh.write(chunk)
    assert file_sha256(out) == sha
    assert plain.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{prefix}/").get("Uploads") is None
    plain.put_object(Bucket=BUCKET, Key=f"{prefix}/runs/r1/workers/w1", Body=b"by boto3")
    plain.put_object(Bucket=BUCKET, Key=f"{prefix}/runs/r1/not a key", Body=b"foreign")
    assert store.get("runs/r1/workers/w1") == b"by boto3"
    assert store.list("runs/r1/w") == ["runs/r1/workers/w1"]
    assert "runs/r1/not a key" not in store.list("")  # objects that are no keys are skipped


def test_a_bucket_without_prefix(moto: MotoServer) -> None:
    bucket = f"bare-{uuid.uuid4().hex[:8]}"
    client(moto.url).create_bucket(Bucket=bucket)
    with open_store(f"s3://{bucket}") as store:
        assert store.list("") == []
        assert store.create("plan", b"1") and not store.create("plan", b"2")
        assert store.list("") == ["plan"] and store.list("/") == []
        assert store.get("plan") == b"1" and store.exists("plan")
    keys = client(moto.url).list_objects_v2(Bucket=bucket)["Contents"]
    assert [o["Key"] for o in keys] == ["plan"]


def test_listing_pages_through_every_key_in_order() -> None:
    url = _fresh()
    with open_store(f"{url}?page=7") as store:
        keys = [f"runs/r/results/m{i:03d}" for i in range(60)] + ["runs/r/plan", "runs/r1/x"]
        threads = [threading.Thread(target=store.create, args=(k, b"")) for k in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        before = store.stats.counts.get("ListObjectsV2", 0)
        assert store.list("runs/r/") == sorted(keys[:-1])
        assert store.stats.counts["ListObjectsV2"] - before == 9  # 61 keys, 7 a page
        assert store.list("runs/r/results/m05") == [f"runs/r/results/m05{i}" for i in range(10)]
        assert store.list("runs/r") == sorted(keys)
        assert store.newest_key("runs/r/results/") == "runs/r/results/m059"


# -- conditional writes -----------------------------------------------------------------------


def test_the_probe_refuses_a_service_that_ignores_if_none_match(
    moto: MotoServer, tmp_path: Path
) -> None:
    """moto behind a proxy that drops If-None-Match: every create answers 200, as on a service
    without conditional writes. The first create says so; nothing is raced, no probe is left."""
    url = _fresh()
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with Proxy(("127.0.0.1", moto.port), strip_if_none_match=True) as proxy:
        store = open_store(f"{url}?endpoint={proxy.url}")
        assert store.list("") == []  # reading works: only creates need the condition
        for create in (lambda: store.create("k", b"v"), lambda: store.create_from_file("k", src)):
            with pytest.raises(UsageError) as info:
                create()
            assert str(info.value) == (
                f"s3 store {url}: this S3 service does not support conditional writes "
                "(If-None-Match); ciflow cannot use it safely: a second create of one key also "
                "succeeded; use a service that honours If-None-Match: * on PutObject (AWS S3 "
                "does since 2024)"
            )
    prefix = url.rsplit("/", 1)[1]
    assert "Contents" not in client(moto.url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)


def test_moto_honours_if_none_match_on_put_and_on_completing_a_multipart_upload(
    moto: MotoServer,
) -> None:
    """What the store relies on, asked of the server with a plain client."""
    plain, key = client(moto.url), f"plain-{uuid.uuid4().hex}"
    plain.put_object(Bucket=BUCKET, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(plain.exceptions.ClientError) as put:
        plain.put_object(Bucket=BUCKET, Key=key, Body=b"2", IfNoneMatch="*")
    upload = plain.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    part = plain.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"3")
    with pytest.raises(plain.exceptions.ClientError) as complete:
        plain.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
        )  # fmt: skip
    for info in (put, complete):
        assert info.value.response["Error"]["Code"] == "PreconditionFailed"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert plain.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"1"
    plain.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)


def test_a_multipart_create_of_an_existing_key_loses_at_completion_and_aborts(
    moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _fresh()
    store = S3Store(f"{url}?part=5")
    first, second = tmp_path / "first", tmp_path / "second"
    write_blob(first, 11 * MiB, seed=1)
    sha = write_blob(second, 11 * MiB, seed=2)
    assert store.create_from_file("blob", second) is True
    uploads = store.stats.counts["UploadPart"]
    assert uploads == 3 and store.create_from_file("blob", first) is False
    assert store.stats.counts["UploadPart"] == uploads  # the HEAD found it: nothing sent
    monkeypatch.setattr(store, "_head", lambda key: None)  # a racer that missed the winner
    assert store.create_from_file("blob", first) is False
    assert store.stats.counts["UploadPart"] == 2 * uploads
    assert store.stats.counts["AbortMultipartUpload"] == 1
    prefix = url.rsplit("/", 1)[1]
    assert client(moto.url).list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get(
        "Uploads"
    ) is None  # fmt: skip
    out = tmp_path / "out"
    assert store.get_to_file("blob", out) and file_sha256(out) == sha


def test_racing_multipart_creates_have_one_winner(moto: MotoServer, tmp_path: Path) -> None:
    """Every racer uploads its parts and completes; one completion wins, the rest hear 412 and
    abort. (Through a proxy that passes one completion at a time: moto's own check is not
    atomic, see `s3_server.Proxy`.)"""
    proxy = Proxy(("127.0.0.1", moto.port), atomic_completions=True).start()
    url = f"{_fresh()}?part=5&endpoint={proxy.url}"
    stores = [S3Store(url) for _ in range(4)]
    files = []
    for i in range(4):
        files.append(tmp_path / f"f{i}")
        write_blob(files[-1], 6 * MiB, seed=i)
    for store in stores:  # no HEAD shortcut: every racer uploads and completes
        store._head = lambda key: None  # type: ignore[method-assign]
    barrier = threading.Barrier(4)
    results: list[bool] = [False] * 4

    def race(i: int) -> None:
        barrier.wait(timeout=30)
        results[i] = stores[i].create_from_file("blob", files[i])

    threads = [threading.Thread(target=race, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    proxy.stop()
    assert results.count(True) == 1
    out = tmp_path / "out"
    assert S3Store(url.partition("&")[0]).get_to_file("blob", out)
    assert file_sha256(out) == file_sha256(files[results.index(True)])
    assert sum(s.stats.counts.get("AbortMultipartUpload", 0) for s in stores) == 3


# -- lost answers, broken downloads, a server that goes away ----------------------------------


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[Proxy]:
    with Proxy(("127.0.0.1", moto.port)) as proxy:
        yield proxy


@pytest.mark.parametrize("sole", [False, True])
def test_a_create_whose_answer_was_lost_is_settled_by_its_writer_token(
    proxy: Proxy, tmp_path: Path, sole: bool
) -> None:
    """The PUT took effect but its 200 never came: the retry hears 412, and the writer token in
    the object's metadata says the value is ours (True). Another writer's value stays False."""
    url = f"{_fresh()}?endpoint={proxy.url}&part=5"
    store = S3Store(url, sleep=_no_sleep)
    assert store.create("warm-up", b"")  # the probe is done
    proxy.fault("PUT", "drop")
    assert store.create("claims/m/1", b"mine", sole=sole) is True
    assert store.stats.counts["retries"] == 1 and store.get("claims/m/1") == b"mine"
    big = tmp_path / "big"
    write_blob(big, 6 * MiB)
    proxy.fault("POST", "drop")  # CreateMultipartUpload is a POST, then the completion
    proxy.fault("POST", "drop")
    assert store.create_from_file("outputs/m/1", big, sole=sole) is True
    assert store.get("outputs/m/1") == big.read_bytes()
    other = S3Store(url, sleep=_no_sleep)
    proxy.fault("PUT", "drop")
    assert other.create("claims/m/1", b"theirs") is False
    assert store.get("claims/m/1") == b"mine"


def test_a_download_cut_short_starts_again(proxy: Proxy, tmp_path: Path) -> None:
    store = S3Store(f"{_fresh()}?endpoint={proxy.url}", sleep=_no_sleep)
    data = bytes(range(256)) * 4096  # 1 MiB
    assert store.create("blob", data)
    for _ in range(2):
        proxy.fault("GET", "cut")
    out = tmp_path / "out"
    assert store.get_to_file("blob", out) and out.read_bytes() == data
    proxy.fault("GET", "cut")
    assert store.get("blob") == data
    assert store.stats.counts["retries"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_transient_answers_are_retried_and_exhausted_retries_are_flaky(
    proxy: Proxy, tmp_path: Path
) -> None:
    url = f"{_fresh()}?endpoint={proxy.url}&part=5"
    store = S3Store(url, sleep=_no_sleep)
    proxy.fault("PUT", "503 SlowDown")
    proxy.fault("PUT", "409 ConditionalRequestConflict")  # a conflicting write in flight
    proxy.fault("PUT", "500 InternalError")
    assert store.create("k", b"v") is True  # the probe's first PUT took the three faults
    assert store.stats.counts["retries"] == 3
    for _ in range(6):
        proxy.fault("GET", "503 SlowDown")
    with pytest.raises(StoreFlaky) as info:
        store.get("k")
    assert str(info.value) == (
        f"s3 store {url.partition('?')[0]}: get k failed after 6 attempts: HTTP 503 SlowDown: "
        "injected by the test proxy; check that the service is up and reachable "
        "(AWS_ENDPOINT_URL, ?endpoint=) or try later"
    )
    small, big = tmp_path / "small", tmp_path / "big"
    small.write_bytes(b"small")
    write_blob(big, 6 * MiB)
    proxy.fault("PUT", "503 SlowDown")
    assert store.create_from_file("small", small) and store.get("small") == b"small"
    proxy.fault("PUT", "500 InternalError")  # the first part's upload
    proxy.fault("PUT", "drop")  # and its second attempt's answer is lost: sent again
    assert store.create_from_file("big", big) and store.get("big") == big.read_bytes()
    assert store.stats.counts["retries"] == 3 + 5 + 1 + 2
    proxy.fault("GET", "400 InvalidRequest")  # not transient: one attempt, a plain error
    with pytest.raises(StoreError, match="get k: InvalidRequest: injected") as error:
        store.get("k")
    assert not isinstance(error.value, StoreUnavailable)
    assert store.get("k") == b"v"


def test_the_probe_refuses_a_service_that_rejects_if_none_match(proxy: Proxy) -> None:
    store = S3Store(f"{_fresh()}?endpoint={proxy.url}", sleep=_no_sleep)
    proxy.fault("PUT", "501 NotImplemented")
    with pytest.raises(UsageError, match=re.escape(
        "does not support conditional writes (If-None-Match); ciflow cannot use it safely: "
        "it refused the header (NotImplemented); use a service that honours"
    )):  # fmt: skip
        store.create("k", b"v")
    assert store.create("k", b"v")  # asked again: this time the service honours it


def test_a_server_down_at_start_is_one_clear_error_after_a_bounded_wait(tmp_path: Path) -> None:
    down = Proxy(("127.0.0.1", 9)).start()
    down.stop()  # a port nothing listens on
    url = f"s3://{BUCKET}/run?endpoint={down.url}"
    pauses: list[float] = []
    with pytest.raises(StoreFlaky) as info:
        S3Store(url, sleep=pauses.append)  # the shared policy: 6 attempts, 5 pauses
    assert str(info.value) == (
        f"s3 store s3://{BUCKET}/run: open failed after 6 attempts: cannot connect "
        "(EndpointConnectionError); check that the service is up and reachable "
        "(AWS_ENDPOINT_URL, ?endpoint=) or try later"
    )
    assert len(pauses) == 5
    assert all(2**i / 2 <= p <= 2**i for i, p in enumerate(pauses))  # 1 s doubling, jittered
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "ciflow", "status", "--store", f"{url}&timeout=0.5",
         "--run-id", "x"],
        capture_output=True, text=True, timeout=60, env=process_env(down.url),
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert proc.stderr == (
        f"ciflow: error: s3 store s3://{BUCKET}/run: open failed for 0.5 s (?timeout=): cannot "
        "connect (EndpointConnectionError); check that the service is up and reachable "
        "(AWS_ENDPOINT_URL, ?endpoint=) or try later\n"
    )


def test_a_server_that_comes_up_or_back_before_the_deadline_is_waited_for(
    moto: MotoServer,
) -> None:
    """Down at start, then up; later down mid-run and up again with its state (a proxy in
    front of moto, which itself would forget everything on a restart): the calls succeed."""
    proxy = Proxy(("127.0.0.1", moto.port)).start()
    proxy.stop()

    def up_again(after: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: (time.sleep(after), proxy.start()))
        thread.start()
        return thread

    try:
        thread = up_again(0.3)
        store = S3Store(f"{_fresh()}?endpoint={proxy.url}&timeout=30")
        thread.join()
        assert store.stats.counts["retries"] >= 1
        assert store.create("runs/r/plan", b"plan")
        proxy.stop()
        thread = up_again(0.3)
        troubled = store.stats.troubled
        assert store.create("runs/r/results/a", b"a") is True
        thread.join()
        assert store.list("runs/r/") == ["runs/r/plan", "runs/r/results/a"]
        assert store.stats.troubled > troubled  # what liveness observers forgive
    finally:
        proxy.stop()


# -- configuration and errors -----------------------------------------------------------------


def test_the_endpoint_comes_from_the_url_or_the_aws_variables(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = "http://127.0.0.1:9"
    url = _fresh()
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    assert open_store(f"{url}?endpoint={moto.url}&timeout=5&addressing=path").list("") == []
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto.url)  # boto3's own: the S3 one wins
    assert open_store(f"{url}?timeout=5").list("") == []


def test_a_missing_bucket_is_one_clear_line(moto: MotoServer) -> None:
    with pytest.raises(StoreUnavailable) as info:
        open_store("s3://no-such-bucket/run")
    assert str(info.value) == (
        f"s3 store s3://no-such-bucket/run: bucket 'no-such-bucket' does not exist at "
        f"{moto.url}; create it (aws s3 mb s3://no-such-bucket) or fix the URL or "
        "AWS_ENDPOINT_URL"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("s3://", "use s3://BUCKET[/PREFIX]"),
        ("s3://b/a b", "the prefix must be"),
        ("s3://b/../x", "the prefix must be"),
        ("s3://b?colour=red", "unknown option 'colour'; s3:// takes endpoint, region"),
        ("s3://b?timeout=-1", "timeout must be a positive number"),
        ("s3://b?page=5000", "page must be 1 to 1000"),
        ("s3://b?part=1", "part must be at least 5"),
        ("s3://b?endpoint=ftp://x", "endpoint must be an http"),
    ],
)
def test_bad_urls_are_usage_errors(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=re.escape(says)):
        open_store(url)


def test_without_boto3_the_store_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(UsageError, match=re.escape("install ciflow[s3]")):
        open_store(f"s3://{BUCKET}")


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[MotoServer, dict[str, str]]]:
    """A second moto server that checks credentials: a user allowed s3:* and one allowed
    nothing (their access keys), then moto's IAM checks switched on for every request."""
    import boto3  # type: ignore[import-untyped]

    with MotoServer() as server:
        client(server.url).create_bucket(Bucket="guarded")
        iam = boto3.session.Session().client(
            "iam", endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        keys = {}
        for user, actions in (("writer", ["s3:*"]), ("nobody", [])):
            iam.create_user(UserName=user)
            if actions:
                policy = {"Version": "2012-10-17", "Statement": [
                    {"Effect": "Allow", "Action": actions, "Resource": "*"}]}  # fmt: skip
                iam.put_user_policy(
                    UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy)
                )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = key["AccessKeyId"]
            keys[f"{user}-secret"] = key["SecretAccessKey"]
        server.post("/moto-api/reset-auth", b"0")  # from now on every request is checked
        yield server, keys


def test_credentials_are_checked_and_a_refusal_is_one_line_and_exit_2(
    guarded: tuple[MotoServer, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, keys = guarded
    url = "s3://guarded/run"
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["writer"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["writer-secret"])
    with open_store(url) as store:
        assert store.create("plan", b"p") and store.get("plan") == b"p"
    for key, secret, code in [
        (keys["writer"], "wrong-secret", "SignatureDoesNotMatch"),
        ("AKIAUNKNOWN000000000", "x", "InvalidAccessKeyId"),
        (keys["nobody"], keys["nobody-secret"], "AccessDenied"),
    ]:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(StoreDenied, match=f"the service refused the request \\({code}"):
            S3Store(url, sleep=pytest.fail)  # never retried
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "ciflow", "status", "--store", url, "--run-id", "x"],
        capture_output=True, text=True, timeout=60,
        env=process_env(server.url, key=keys["writer"], secret="wrong-secret"),
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    line = proc.stderr
    assert line.count("\n") == 1 and line.startswith(
        f"ciflow: error: s3 store {url}: open: the service refused the request "
        "(SignatureDoesNotMatch: "
    ), line
    assert line.endswith(
        "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and that "
        "they may read and write bucket 'guarded'\n"
    ), line


# -- distributed runs through a bucket --------------------------------------------------------


def _dry_run(moto: MotoServer, tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "ciflow", "dry-run", "--workers", "4",
         "--store", f"s3://{BUCKET}/{tmp_path.name}", "--report", str(report), *args],
        capture_output=True, text=True, timeout=180, env=process_env(moto.url),
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert report.exists(), out
    return proc.returncode, out, json.loads(report.read_text())


def _outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["outcome"] for m in report["modules"]}


def _run_keys(moto: MotoServer, tmp_path: Path) -> list[str]:
    plain = client(moto.url)
    pages = plain.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{tmp_path.name}/runs/"
    )
    return [o["Key"].split("/", 3)[3] for page in pages for o in page.get("Contents", ())]


def test_a_dry_run_through_a_bucket(moto: MotoServer, tmp_path: Path) -> None:
    code, out, report = _dry_run(moto, tmp_path, "-f", str(PIPELINES / "distributed.py"))
    assert code == 0, out
    assert "OK: 5 module(s): 5 succeeded" in out
    assert {m["name"]: m["result"] for m in report["modules"]}["report"] == 5
    assert "worker exit codes: [0, 0, 0, 0]" in out
    keys = _run_keys(moto, tmp_path)
    assert {"plan", "results/report"} <= set(keys) and len(keys) > 10


def test_a_dry_run_through_a_bucket_survives_a_killed_worker(
    moto: MotoServer, tmp_path: Path
) -> None:
    code, out, report = _dry_run(
        moto, tmp_path, "-f", str(PIPELINES / "distributed.py"), "--kill", "1@0.5",
        "--heartbeat-timeout", "2",
    )  # fmt: skip
    assert code == 0, out
    assert set(_outcomes(report).values()) == {"succeeded"}, out
    codes = re.search(r"worker exit codes: \[(.*)\]", out)
    assert codes is not None and codes.group(1).split(", ")[1] == "-9", out


FAILING = """
import sys
import ciflow

SLEEP = [sys.executable, "-c", "import time; time.sleep(0.5)"]


@ciflow.module()
def boom(ctx: ciflow.Context) -> None:
    ctx.run(SLEEP)
    raise RuntimeError("planned failure")
"""

CHAIN = """

@ciflow.module(depends_on={deps!r})
def m{i}(ctx: ciflow.Context) -> None:
    ctx.run(SLEEP)
"""


def test_a_dry_run_through_a_bucket_fails_fast(moto: MotoServer, tmp_path: Path) -> None:
    text = FAILING + "".join(
        CHAIN.format(i=i, deps=[f"m{i - 4}"] if i >= 4 else []) for i in range(16)
    )
    file = tmp_path / "ciflow.py"
    file.write_text(text)
    code, out, report = _dry_run(moto, tmp_path, "-f", str(file))
    assert code == 1, out
    outcomes = _outcomes(report)
    assert outcomes["boom"] == "failed" and "cancelled" in outcomes.values(), outcomes
    assert all(outcome is not None for outcome in outcomes.values())
    assert "cancel" in _run_keys(moto, tmp_path)
    assert "Traceback" not in out
