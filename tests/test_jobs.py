"""The GitHub jobs API client, against the emulator's REST route (real HTTP on loopback):
its answers, the rate limit it reports, the run's budget, and the fallback to heartbeats."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ciflow.distributed.keys import RunKeys
from ciflow.distributed.liveness import EVIDENCE, HeartbeatThread, Liveness, new_worker_id
from ciflow.errors import UsageError
from ciflow.providers.github_jobs import BUDGET_ENV, GitHubJobs, JobsApiLimited, job_of
from ciflow.stores import open_store
from ciflow.stores.base import Store, StoreError
from ciflow.testing.emulator import REPOSITORY, Faults, GitHubEmulator
from ciflow.testing.emulator.rest import PRIMARY_MESSAGE, REST_LIMIT, SECONDARY_MESSAGE

#: a budget that never spaces looks out (tests that ask at every call)
UNBOUNDED = {BUDGET_ENV: "1000000"}


@pytest.fixture(autouse=True)
def _fresh_hour(emulator: GitHubEmulator) -> Iterator[None]:
    """Each test starts a fresh hour of the repository's REST limit, and leaves one."""
    emulator.rest_limit, emulator.rest_used, emulator.rest_secondary = REST_LIMIT, 0, None
    yield
    emulator.rest_limit, emulator.rest_used, emulator.rest_secondary = REST_LIMIT, 0, None


class Clock:
    """A monotonic clock the test moves by hand (the budget's schedule, not wall time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(env: dict[str, str], clock: Clock | None = None) -> GitHubJobs:
    jobs = GitHubJobs.from_env(env)
    assert jobs is not None
    jobs.sleep = lambda _s: None
    if clock is not None:
        jobs.clock = clock
    return jobs


def rest(emu: GitHubEmulator, env: dict[str, str], tail: str, **params: str) -> requests.Response:
    """One raw GET of the emulator's REST route for ``env``'s run."""
    url = f"{emu.url}repos/{REPOSITORY}/actions/runs/{env['GITHUB_RUN_ID']}/{tail}"
    auth = {"Authorization": f"Bearer {env['GITHUB_TOKEN']}"}
    return requests.get(url, headers=auth, params=params, timeout=10)


def test_statuses_follow_jobs_starting_and_ending(emu: GitHubEmulator) -> None:
    a, b = emu.env("run-1", "a"), emu.env("run-1", "b")
    emu.env("run-2", "other")  # another run's job is not listed
    jobs = client(a)
    assert jobs.statuses() == {a["CIFLOW_JOB_ID"]: "in_progress", b["CIFLOW_JOB_ID"]: "in_progress"}
    emu.finish_job("run-1", "b")
    assert jobs.statuses()[b["CIFLOW_JOB_ID"]] == "completed"


def test_many_jobs_are_read_page_by_page(emu: GitHubEmulator) -> None:
    envs = [emu.env("run-big", f"job-{i}") for i in range(230)]
    jobs = client(envs[0])
    jobs.calls = 0
    states = jobs.statuses()
    assert set(states) == {e["CIFLOW_JOB_ID"] for e in envs}
    assert jobs.calls == 3 and jobs.pages == 3  # 100 + 100 + 30
    assert jobs.workers == 230  # the share's divisor: every job of the run attempt


def test_no_permission_and_bad_token_are_one_clear_line(emu: GitHubEmulator) -> None:
    env = emu.env("run-3", "a")
    emu.jobs_api = False
    with pytest.raises(StoreError, match=r"HTTP 403: Resource not accessible.*actions: read"):
        client(env).statuses()
    emu.jobs_api = True
    with pytest.raises(StoreError, match="HTTP 401: Bad credentials; GITHUB_TOKEN is not accepted"):
        client({**env, "GITHUB_TOKEN": "ghs_wrong"}).statuses()
    with pytest.raises(StoreError, match="404"):
        client({**env, "GITHUB_REPOSITORY": "someone/else"}).statuses()


def test_transient_errors_are_retried(emu: GitHubEmulator) -> None:
    env = emu.env("run-4", "a")
    emu.faults = Faults(rate=0.5, kinds={"500", "503", "drop"}, seed=3)
    jobs = client(env)
    for _ in range(10):
        try:
            assert env["CIFLOW_JOB_ID"] in jobs.statuses()
        except StoreError as exc:  # three faults in a row: the message says so
            assert "after 3 attempts" in str(exc)
    assert jobs.calls > 10  # some calls were retried
    emu.faults = Faults(rate=1.0, kinds={"429"}, retry_after=3600)
    calls = jobs.calls
    with pytest.raises(JobsApiLimited, match="HTTP 429: injected fault 429, retry after 3600s"):
        jobs.statuses()
    assert jobs.calls == calls + 1  # a rate limit is not retried: the run stops asking


def test_outside_github_or_without_token_there_is_no_client(emu: GitHubEmulator) -> None:
    env = emu.env("run-5", "a")
    assert GitHubJobs.from_env({}) is None
    assert GitHubJobs.from_env({k: v for k, v in env.items() if k != "GITHUB_TOKEN"}) is None
    assert GitHubJobs.from_env({**env, "GITHUB_ACTIONS": "false"}) is None
    assert GitHubJobs.from_env({**env, "GITHUB_TOKEN": "", "CIFLOW_GITHUB_TOKEN": "x"}) is not None


def test_worker_ids_carry_their_job() -> None:
    assert job_of(new_worker_id(3, "51725241954")) == "51725241954"
    assert job_of(new_worker_id(3)) is None
    assert job_of("s1-host-j12-345") is None  # a host name with -j in it is not a job


def test_liveness_asks_the_jobs_api_not_heartbeats(emu: GitHubEmulator, tmp_path: Path) -> None:
    a, b = emu.env("run-6", "a"), emu.env("run-6", "b")
    store = open_store(f"file://{tmp_path}")
    watched = new_worker_id(1, b["CIFLOW_JOB_ID"])
    beating = new_worker_id(2)
    clock = Clock()
    jobs = client({**a, **UNBOUNDED}, clock)
    live = Liveness(store, RunKeys("r"), timeout=0.0, jobs=jobs, jobs_interval=1.0)
    live.refresh()
    live.dead([watched, beating])  # first sight starts the heartbeat clock
    for _ in range(EVIDENCE):  # evidence: several listings of its own see the silence
        live.refresh()
    live.refresh_jobs()
    assert live.dead([watched, beating]) == {beating}  # silent; the watched job is running
    emu.finish_job("run-6", "b")
    live.refresh_jobs()  # within the interval: no call
    assert live.dead([watched]) == set()  # not asked again yet
    clock.now += 1.0
    live.refresh_jobs()
    assert live.dead([watched]) == {watched}
    emu.jobs_api = False
    clock.now += 0.5
    live.refresh_jobs()  # within the interval: no call, no error
    assert live.jobs_error is None
    clock.now += 0.5
    live.refresh_jobs()
    assert live.jobs_error is not None and "403" in live.jobs_error
    assert live.switched is None  # a refused permission is no rate limit: asked again later
    assert live.dead([watched]) == {watched}  # the last answer still holds


# -- the rate limit as GitHub reports it -------------------------------------------------------


def test_every_rest_answer_carries_the_rate_limit_headers(emu: GitHubEmulator) -> None:
    env = emu.env("run-h", "a")
    first = rest(emu, env, "attempts/1/jobs")
    assert first.status_code == 200
    head = first.headers
    assert (head["x-ratelimit-limit"], head["x-ratelimit-remaining"]) == ("1000", "999")
    assert (head["x-ratelimit-used"], head["x-ratelimit-resource"]) == ("1", "core")
    assert abs(int(head["x-ratelimit-reset"]) - (time.time() + 3600)) < 120  # epoch seconds
    missing = rest(emu, env, "attempts/1/nothing")  # a 404 counts too, as on GitHub
    assert missing.status_code == 404 and missing.headers["x-ratelimit-used"] == "2"
    jobs = client(env)
    jobs.statuses()
    assert jobs.rate is not None and jobs.rate.limit == 1000 and jobs.rate.used == 3
    assert jobs.remaining == 997 and jobs.reset == float(head["x-ratelimit-reset"])
    assert jobs.rate.reserve == 100  # 10 % of the limit, at least 50
    assert jobs.rate.describe().startswith("997 of 1000 requests left until ")


def test_a_spent_hour_is_a_403_and_a_secondary_limit_a_429(emu: GitHubEmulator) -> None:
    env = emu.env("run-x", "a")
    emu.rest_used = emu.rest_limit  # the repository's other workflows spent the hour
    spent = rest(emu, env, "attempts/1/jobs")
    assert spent.status_code == 403 and spent.json()["message"] == PRIMARY_MESSAGE
    assert spent.headers["x-ratelimit-remaining"] == "0"
    emu.rest_used, emu.rest_secondary = 0, 30
    calls = emu.rest_calls
    secondary = rest(emu, env, "attempts/1/jobs")
    assert secondary.status_code == 429 and secondary.json()["message"] == SECONDARY_MESSAGE
    assert secondary.headers["retry-after"] == "30" and emu.rest_calls == calls + 1
    with pytest.raises(JobsApiLimited, match="HTTP 429: You have exceeded a secondary rate limit"):
        client(env).statuses()
    emu.rest_secondary = None
    emu.rest_used = emu.rest_limit
    with pytest.raises(JobsApiLimited, match=r"HTTP 403: API rate limit exceeded.*; 0 of 1000"):
        client(env).statuses()


def test_jobs_listings_are_attempt_aware(emu: GitHubEmulator) -> None:
    a, b = emu.env("run-r", "a"), emu.env("run-r", "b")
    b2 = emu.env("run-r", "b", attempt=2)  # "Re-run failed jobs": b again, with a new id
    ids = {e["CIFLOW_JOB_ID"] for e in (a, b, b2)}
    assert len(ids) == 3

    def listed(tail: str, **params: str) -> list[tuple[str, int]]:
        answer = rest(emu, a, tail, **params)
        assert answer.status_code == 200, answer.text
        return sorted((j["name"], j["run_attempt"]) for j in answer.json()["jobs"])

    assert listed("attempts/1/jobs") == [("a", 1), ("b", 1)]
    assert listed("attempts/2/jobs") == [("b", 2)]
    assert listed("jobs") == [("a", 1), ("b", 2)]  # filter=latest, the default
    assert listed("jobs", filter="latest") == [("a", 1), ("b", 2)]
    assert listed("jobs", filter="all") == [("a", 1), ("b", 1), ("b", 2)]
    assert rest(emu, a, "jobs", filter="newest").status_code == 422
    assert rest(emu, a, "attempts/0/jobs").status_code == 404
    assert set(client(b2).statuses()) == {b2["CIFLOW_JOB_ID"]}  # a worker of attempt 2


def test_the_budget_setting(emu: GitHubEmulator) -> None:
    env = emu.env("run-b", "a")
    assert client(env).budget == 200
    assert client({**env, BUDGET_ENV: "50"}).budget == 50
    assert GitHubJobs.from_env({**env, BUDGET_ENV: "0"}) is None  # heartbeats only
    for bad in ("-3", "lots"):
        with pytest.raises(UsageError, match=f"{BUDGET_ENV}=.* is not a whole number"):
            GitHubJobs.from_env({**env, BUDGET_ENV: bad})


# -- the run's budget --------------------------------------------------------------------------


def test_looks_are_spaced_to_the_workers_share_of_the_budget(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    """20 calls an hour over the run's 2 jobs: 10 a worker, a look every 360 s at most."""
    a, _ = emu.env("run-s", "a"), emu.env("run-s", "b")
    clock = Clock()
    jobs = client({**a, BUDGET_ENV: "20"}, clock)
    jobs.statuses()  # the worker's first look (`Worker._watch_jobs`)
    assert (jobs.workers, jobs.share(), jobs.interval()) == (2, 10, 360.0)
    live = Liveness(open_store(f"file://{tmp_path}"), RunKeys("r"), 1.0, jobs, jobs_interval=1.0)
    calls = emu.rest_calls
    for _ in range(5):
        live.refresh_jobs()
    assert emu.rest_calls == calls  # due 360 s after the first look, not now
    asked: list[float] = []
    while clock.now < 1000.0 + 3 * 3600:
        clock.now += 7.0
        before = emu.rest_calls
        live.refresh_jobs()
        asked += [clock.now] * (emu.rest_calls - before)
    assert live.switched is None and live.jobs_error is None
    assert all(later - earlier >= 360.0 for earlier, later in zip(asked, asked[1:], strict=False))
    looks = [1000.0, *asked]
    for start in looks:  # no hour holds more than the share (the first look included)
        assert sum(start <= t < start + 3600 for t in looks) <= 10
    assert len(asked) >= 28  # and the share is used: about one look every 360 s


def test_retries_never_take_a_worker_over_its_share(emu: GitHubEmulator, tmp_path: Path) -> None:
    a, _ = emu.env("run-t", "a"), emu.env("run-t", "b")
    clock = Clock()
    jobs = client({**a, BUDGET_ENV: "8"}, clock)
    jobs.statuses()
    assert (jobs.share(), jobs.interval()) == (4, 900.0)
    live = Liveness(open_store(f"file://{tmp_path}"), RunKeys("r"), 1.0, jobs, jobs_interval=1.0)
    emu.faults = Faults(rate=1.0, kinds={"500"})  # (faulted requests skip `emu.rest_calls`)
    calls = jobs.calls
    clock.now += 900.0
    live.refresh_jobs()  # 3 attempts: 1 + 3 = this hour's 4 calls
    clock.now += 900.0
    live.refresh_jobs()  # no room: no call at all
    assert jobs.calls == calls + 3 and jobs.spent() == 4
    assert live.jobs_error is not None and live.switched is None  # it waits, no fallback
    emu.faults = Faults(rate=1.0, kinds={"500"}, seed=1)
    jobs.budget = 10  # 5 an hour: room for one more call; the retry after it is refused
    clock.now += 900.0
    live.refresh_jobs()
    assert jobs.calls == calls + 4 and "calls of the last hour are spent" in str(live.jobs_error)
    jobs.budget = 8
    emu.faults = Faults()
    rest_calls = emu.rest_calls
    clock.now = 1900.0 + 3600.0  # the retried look's calls have left the hour: room again
    live.refresh_jobs()
    assert emu.rest_calls == rest_calls + 1 and live.jobs_error is None


# -- the fallback to heartbeats ----------------------------------------------------------------


def _observer(
    store: Store, keys: RunKeys, env: dict[str, str], said: list[str], clock: Clock | None = None
) -> tuple[Liveness, str]:
    """The liveness of a ``-j`` worker as `Worker._watch_jobs` sets it up, and its id."""
    jobs = client(env, clock)
    jobs.statuses()  # its first look
    me = new_worker_id(int(env["CIFLOW_JOB_ID"]) % 100, env["CIFLOW_JOB_ID"])
    live = Liveness(store, keys, timeout=1.0, jobs=jobs, jobs_interval=0.1, say=said.append)
    live.heartbeats = lambda: HeartbeatThread(store, keys, me, 0.05, say=said.append)
    return live, me


def _beats_of(store: Store, keys: RunKeys, worker: str) -> list[str]:
    deadline = time.monotonic() + 10  # the first beat goes at once; under load it may lag
    while not (found := store.list(f"{keys.alive_prefix}{worker}/")):
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return found


@pytest.mark.parametrize("why", ["403", "429", "reserve", "budget"])
def test_the_worker_falls_back_to_heartbeats_and_says_why(
    emu: GitHubEmulator, tmp_path: Path, why: str
) -> None:
    run = f"run-f{why}"
    env, _ = emu.env(run, "a"), emu.env(run, "b")
    if why == "reserve":
        emu.rest_used = emu.rest_limit - 40  # other workflows left 40 of the hour's requests
    if why == "budget":
        env = {**env, BUDGET_ENV: "1"}  # 1 call an hour over 2 jobs: not one look each
    store, keys, said, clock = open_store(f"file://{tmp_path}"), RunKeys("r"), [], Clock()
    live, me = _observer(store, keys, env, said, clock)
    calls = emu.rest_calls
    if why == "403":
        emu.rest_used = emu.rest_limit
    elif why == "429":
        emu.rest_secondary = 60
    clock.now += 3600.0
    live.refresh_jobs()
    asked = emu.rest_calls - calls
    live.refresh_jobs()
    assert emu.rest_calls - calls == asked  # never asked again
    lines = {
        "403": r"jobs API: HTTP 403: API rate limit exceeded for installation ID 1\.; "
        r"0 of 1000 requests left until \d\d:\d\d UTC",
        "429": r"jobs API: HTTP 429: You have exceeded a secondary rate limit.*, retry after 60s",
        "reserve": r"jobs API: 39 of 1000 requests left until \d\d:\d\d UTC",
        "budget": rf"jobs API: {BUDGET_ENV}=1 calls an hour over 2 jobs of the run leave this "
        r"worker less than one listing of 1 page\(s\) an hour",
    }
    wanted = rf"liveness: heartbeats from now on \({lines[why]}\)"
    assert len(said) == 1 and re.fullmatch(wanted, said[0]), said
    assert asked == (1 if why in ("403", "429") else 0)  # reserve and budget: known beforehand
    assert live.switched is not None and _beats_of(store, keys, me)
    assert live.jobs is not None
    live.jobs.close()  # as the worker leaves: its heartbeats stop with it
    assert live.beats is not None
    live.beats.join(timeout=10)
    assert not live.beats.is_alive()


def test_a_live_worker_that_fell_back_is_never_taken_for_dead(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    """Two ``-j`` workers: A reaches the rate limit and beats; B, still on the jobs API, sees
    A's beats and falls back too. Neither takes the other for dead, though neither's job
    state is read again; once A's beats stop, B finds it dead by them."""
    envs = [emu.env("run-2o", "a"), emu.env("run-2o", "b")]
    store, keys = open_store(f"memory://two-{secrets.token_hex(4)}"), RunKeys("r")
    said_a: list[str] = []
    said_b: list[str] = []
    clock = Clock()
    a, id_a = _observer(store, keys, {**envs[0], **UNBOUNDED}, said_a, clock)
    b, id_b = _observer(store, keys, {**envs[1], **UNBOUNDED}, said_b, clock)
    workers = [id_a, id_b]
    emu.rest_used = emu.rest_limit  # the hour is spent: A's next look is refused
    try:
        clock.now += 1.0  # A's next look is due
        a.refresh(), a.refresh_jobs()
        assert said_a and "HTTP 403" in said_a[0] and a.switched is not None
        _beats_of(store, keys, id_a)
        b.refresh()  # B's next listing shows A's beats
        assert said_b == [f"liveness: heartbeats from now on (worker {id_a} switched to them)"]
        _beats_of(store, keys, id_b)
        deadline = time.monotonic() + 3.0  # three heartbeat timeouts, many listings each
        while time.monotonic() < deadline:
            for live in (a, b):
                live.refresh(), live.refresh_jobs()
                assert live.dead(workers) == set()
            time.sleep(0.02)
        assert a.jobs is not None
        a.jobs.close()  # A ends without its job being reported completed: its beats stop
        deadline = time.monotonic() + 30
        while id_a not in b.dead(workers) and time.monotonic() < deadline:
            b.refresh()
            time.sleep(0.02)
        assert b.dead(workers) == {id_a}
    finally:
        for live in (a, b):
            if live.jobs is not None:
                live.jobs.close()


def test_after_the_switch_a_silent_worker_gets_a_whole_timeout(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    """A ``-j`` worker that never beats after the switch is dead only a timeout (and evidence)
    after this observer listed the first ``-j`` beat; before, the jobs API alone judged it."""
    env, other = emu.env("run-q", "a"), emu.env("run-q", "c")
    store, keys, said = open_store(f"memory://q-{secrets.token_hex(4)}"), RunKeys("r"), []
    clock = Clock()
    live, me = _observer(store, keys, {**env, **UNBOUNDED}, said, clock)
    silent = new_worker_id(9, other["CIFLOW_JOB_ID"])
    live.timeout = 0.0
    for _ in range(EVIDENCE + 1):
        live.refresh()
    assert live.dead([silent]) == set()  # on the jobs API: in progress
    emu.rest_secondary = 5
    clock.now += 1.0
    live.refresh_jobs()
    assert live.switched is not None and live.run_switched is None
    _beats_of(store, keys, me)
    live.refresh()  # its own beat in the store: the run switched
    assert live.run_switched is not None
    live.timeout = 3600.0
    live.dead([silent])  # the clock starts now
    for _ in range(EVIDENCE + 1):
        live.refresh()
    assert live.dead([silent]) == set()  # evidence, but not a whole timeout since the switch
    live.timeout = 0.5
    deadline = time.monotonic() + 30
    while silent not in live.dead([silent]) and time.monotonic() < deadline:
        live.refresh()
        time.sleep(0.05)
    assert live.dead([silent]) == {silent}
    assert live.jobs is not None
    live.jobs.close()


def test_an_observer_that_cannot_signal_its_switch_keeps_silent_jobs_workers_alive(
    emu: GitHubEmulator, tmp_path: Path
) -> None:
    """A worker on heartbeats that watched others by the jobs API and falls back writes no
    ``-j`` beat: the others may still be on the API, so it never takes them for dead until
    a ``-j`` worker's beat shows that the run switched."""
    env, other, third = emu.env("run-n", "a"), emu.env("run-n", "c"), emu.env("run-n", "d")
    store, keys, said = open_store(f"memory://n-{secrets.token_hex(4)}"), RunKeys("r"), []
    clock = Clock()
    jobs = client({**env, **UNBOUNDED}, clock)
    jobs.statuses()
    live = Liveness(store, keys, timeout=0.0, jobs=jobs, jobs_interval=0.1, say=said.append)
    silent = new_worker_id(9, other["CIFLOW_JOB_ID"])
    emu.rest_secondary = 5
    clock.now += 1.0
    live.refresh_jobs()
    assert live.switched is not None and len(said) == 1 and live.beats is None
    for _ in range(EVIDENCE + 2):
        live.refresh()
        assert live.dead([silent]) == set()
    store.create(keys.alive(new_worker_id(8, third["CIFLOW_JOB_ID"]), 1), b"{}")
    live.refresh()  # a -j worker beats: every one of them does so now
    assert live.run_switched is not None and live.dead([silent]) == set()
    for _ in range(EVIDENCE):
        live.refresh()
    # a -j worker not beating yet also gets two of its slow looks to notice the switch
    time.sleep(2 * store.profile.slow_poll + 0.05)
    assert live.dead([silent]) == {silent}
    jobs.close()


def test_workers_near_the_rate_limit_fall_back_to_heartbeats_and_finish(
    emu: GitHubEmulator, pipelines: Path, tmp_path: Path
) -> None:
    """4 worker jobs (real processes) start with 80 requests left in the repository's hour:
    after their first looks the rest is below the reserve, so each says so and heartbeats;
    none takes another for dead, and the run's results are those of a local run."""
    from test_github_flow import expected, github_run

    emu.rest_used = emu.rest_limit - 80  # the repository's other workflows spent the rest
    file = pipelines / "distributed.py"
    result, codes, out = github_run(emu, file, tmp_path)
    assert codes == [0, 0, 0, 0], out
    assert {r.name: (r.outcome, r.result) for r in result.records} == expected(file)
    assert out.count("liveness: the jobs API watches job") == 4, out
    assert out.count("liveness: heartbeats from now on (") == 4, out  # each worker once
    # by the headers, or by the beats of a worker that switched first
    left = re.findall(r"liveness: heartbeats from now on \(jobs API: (\d+) of 1000", out)
    assert left and all(int(n) < 100 for n in left), out
    beats = [n for m, _, n in emu.call_log if m == "CreateArtifact" and n and "~alive~" in n]
    assert beats and "taking over" not in out and "dead" not in out, out
