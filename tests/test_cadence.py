"""When a worker looks at the store: the plan's prediction (`Forecast`) and the pauses
(`Cadence`), on the pure state machine and a fake clock. How the watcher follows them on a
real store is in tests/test_watch.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ciflow.distributed.cadence import Cadence, Forecast, Outlook
from ciflow.distributed.events import Acquired, Ask, Ended, Listed, Started
from ciflow.distributed.keys import RunKeys
from ciflow.distributed.knowledge import Config, Phase, PlanView
from ciflow.distributed.state import WorkerState
from ciflow.model.module import Module
from ciflow.model.outcome import Outcome
from ciflow.model.pipeline import Pipeline

K = RunKeys("r")
ME = "s0-host-1"


def noop() -> None:
    return None


def machine(mods: list[Module], owner: dict[str, int], **config: object) -> WorkerState:
    """Slot 0's worker state over ``mods`` placed by ``owner`` (slots in plan order)."""
    pipeline = Pipeline(mods)
    slot_order: dict[int, list[str]] = {}
    for name in pipeline.order:
        slot_order.setdefault(owner[name], []).append(name)
    view = PlanView(
        modules=pipeline.modules,
        owner=owner,
        order=sorted(pipeline.order, key=lambda n: owner[n] != 0),
        slot_order=slot_order,
    )
    cfg = Config(worker=ME, slot=0, **config)  # type: ignore[arg-type]
    return WorkerState(plan=view, config=cfg, keys=K)


def run_own(st: WorkerState, name: str, start: float, end: float) -> None:
    st.handle(Acquired(start, name, 1, won=True))
    st.handle(Ended(end, name, 1, Outcome.SUCCEEDED))


def listed(st: WorkerState, now: float, *names: str) -> None:
    st.handle(Listed(now, [K.result(n) for n in names], whole=True))


# --------------------------------------------------------------------- what is due, and when


def test_a_module_is_due_when_the_last_of_its_dependencies_is() -> None:
    a, b = Module(noop, name="a"), Module(noop, name="b")
    x = Module(noop, name="x", depends_on=[a, b])
    st = machine([a, b, x], {"a": 1, "b": 2, "x": 0})
    forecast = Forecast({"a": 10.0, "b": 30.0, "x": 40.0})
    st.handle(Started(0.0))
    assert forecast.outlook(st, 0.0) == Outlook(due=30.0)  # not a's 10 s: x needs b too
    listed(st, 9.0, "b")  # b came early; now only a is missing
    assert forecast.outlook(st, 9.0).due == 10.0 - 21.0  # its earliness moves a's due too


def test_a_result_this_worker_runs_itself_is_no_reason_to_look() -> None:
    own, a = Module(noop, name="own"), Module(noop, name="a")
    x = Module(noop, name="x", depends_on=[own, a])
    y = Module(noop, name="y", depends_on=[a])
    st = machine([own, a, x, y], {"own": 0, "a": 1, "x": 0, "y": 0}, jobs=2)
    forecast = Forecast({"own": 50.0, "a": 10.0, "x": 60.0, "y": 20.0})
    st.handle(Started(0.0))
    st.handle(Acquired(0.0, "own", 1, won=True))
    assert forecast.outlook(st, 1.0).due == 10.0  # for y; x waits on own, which runs here
    listed(st, 10.0, "a")
    st.handle(Acquired(10.0, "y", 1, won=True))
    assert forecast.outlook(st, 10.5) == Outlook(None)  # both job slots busy


def test_with_nothing_left_to_start_the_run_end_is_due() -> None:
    own, a, b = Module(noop, name="own"), Module(noop, name="a"), Module(noop, name="b")
    st = machine([own, a, b], {"own": 0, "a": 1, "b": 1})
    forecast = Forecast({"own": 5.0, "a": 20.0, "b": 40.0})
    st.handle(Started(0.0))
    run_own(st, "own", 0.0, 5.0)
    assert forecast.outlook(st, 5.0) == Outlook(due=40.0, ending=True)  # b, planned last
    listed(st, 39.0, "b")
    assert forecast.outlook(st, 39.0) == Outlook(due=19.0, ending=True)  # a, b's earliness


def test_a_module_the_plan_has_wait_for_its_busy_slot_is_worth_a_steal() -> None:
    own, long = Module(noop, name="own"), Module(noop, name="long")
    a = Module(noop, name="a")
    queued = Module(noop, name="queued", depends_on=[a])  # slot 1 is on `long` until 100
    mods, owner = [own, long, a, queued], {"own": 0, "long": 1, "a": 2, "queued": 1}
    finish = {"own": 5.0, "long": 100.0, "a": 20.0, "queued": 110.0}
    for steal, due in ((True, 20.0), (False, 110.0)):
        st = machine(mods, owner, steal=steal)
        forecast = Forecast(finish)
        st.handle(Started(0.0))
        run_own(st, "own", 0.0, 5.0)
        assert forecast.outlook(st, 5.0).due == due  # without stealing: only the run's end


def test_a_pending_steal_request_is_an_exchange() -> None:
    long, queued = Module(noop, name="long"), Module(noop, name="queued")
    st = machine([long, queued], {"long": 1, "queued": 1})
    forecast = Forecast({"long": 100.0, "queued": 110.0})
    st.handle(Started(0.0))
    st.handle(Listed(0.0, [K.worker("s1-host-2")], whole=True))
    assert not forecast.outlook(st, 0.0).exchange
    out = st.handle(Listed(1.0, [], whole=True))
    assert any(isinstance(i, Ask) for i in out) and st.phase["queued"] is Phase.ASKED
    assert forecast.outlook(st, 1.0).exchange


# --------------------------------------------------------------------- the drift


def drifting() -> tuple[WorkerState, Forecast]:
    """Slot 0 runs own1 (planned 0-5) and x (needs own1 and a: slot 1's, planned to 10)."""
    own1, a = Module(noop, name="own1"), Module(noop, name="a")
    x = Module(noop, name="x", depends_on=[own1, a])
    b = Module(noop, name="b")
    st = machine([own1, a, b, x], {"own1": 0, "a": 1, "b": 1, "x": 0})
    st.handle(Started(0.0))
    return st, Forecast({"own1": 5.0, "a": 10.0, "b": 4.0, "x": 15.0})


def test_a_result_of_ours_sets_the_drift() -> None:
    st, forecast = drifting()
    st.handle(Acquired(0.0, "own1", 1, won=True))
    forecast.outlook(st, 0.0)
    st.handle(Ended(8.0, "own1", 1, Outcome.SUCCEEDED))
    assert forecast.outlook(st, 8.0).due == 13.0 and forecast.drift == 3.0


def test_a_result_learned_late_does_not_make_the_run_look_later() -> None:
    st, forecast = drifting()
    st.handle(Acquired(0.0, "own1", 1, won=True))
    forecast.outlook(st, 0.0)
    listed(st, 30.0, "b")  # b (planned 4) first seen at 30 s, while own1 ran: learned late
    forecast.outlook(st, 30.0)
    assert forecast.drift == 0.0


def test_a_result_that_came_early_moves_the_drift_earlier() -> None:
    st, forecast = drifting()
    st.handle(Acquired(0.0, "own1", 1, won=True))
    forecast.outlook(st, 0.0)
    listed(st, 2.0, "b")  # planned 4: 2 s early, whenever it was learned
    assert forecast.outlook(st, 2.0).due is None and forecast.drift == -2.0


def test_the_awaited_result_that_came_late_while_looked_for_sets_the_drift() -> None:
    st, forecast = drifting()
    run_own(st, "own1", 0.0, 5.0)
    assert forecast.outlook(st, 5.0).due == 10.0  # free, waiting for a
    forecast.outlook(st, 11.0)
    listed(st, 12.5, "a")  # 2.5 s late, seen while looking closely
    forecast.outlook(st, 12.5)
    assert forecast.drift == 2.5


# --------------------------------------------------------------------- the pauses

CADENCE = Cadence.of(0.5, 15.0)
times = st.floats(min_value=0.0, max_value=1e5, allow_nan=False)


@given(
    last=times,
    woken=st.floats(min_value=0.0, max_value=100.0),
    due=st.none() | times,
    exchange=st.booleans(),
    ending=st.booleans(),
)
def test_looks_are_never_closer_than_fast_nor_further_apart_than_the_longest_pause(
    last: float, woken: float, due: float | None, exchange: bool, ending: bool
) -> None:
    now = last + woken
    nxt = CADENCE.next_look(last, now, Outlook(due, exchange, ending))
    longest = CADENCE.exchange if exchange else CADENCE.slow
    assert nxt >= last + CADENCE.fast
    assert nxt <= max(last + longest, now + 2 * CADENCE.fast)


def test_cadence_of_a_profile() -> None:
    assert Cadence.of(0.5, 15.0) == Cadence(0.5, 15.0, 3.75, 0.25, 1.0)
    assert Cadence.of(2.0, 1.0).fast == 1.0  # never faster than the longest pause
