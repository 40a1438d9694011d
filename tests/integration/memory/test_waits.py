"""Parked runs in a real SQLite and PostgreSQL store: the fan-in hands the parent on exactly
once when its children end at the same instant in different processes, a signal sent twice at
once resumes once, and each failure policy and timeout does what it says."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from app.memory import endings, waits
from app.memory.migrate import migrate
from app.memory.records import (
    CallRecord,
    ErrorType,
    FailurePolicy,
    NewRun,
    RunStatus,
    StepKind,
    StepRecord,
    TimeoutPolicy,
    WaitKind,
    utc_now,
)
from app.memory.schema import run_children
from app.memory.sessions import SessionStore

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'waits.sqlite3'}"
        migrate(url)
        yield url
        return
    url = request.getfixturevalue("pg_url")
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE steps, waits, run_children, runs, sessions, accepted_runs"))
    engine.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[SessionStore]:
    s = SessionStore.from_url(store_url, migrate=False)
    yield s
    s.close()


def _message(run_id: str) -> dict[str, Any]:
    return {"agent": "boss", "session_id": None, "run_id": run_id, "step": 1}


def _child(i: int, policy: FailurePolicy = FailurePolicy.FAIL, retries: int = 0) -> waits.Child:
    kwargs = {"agent": "worker", "input": f"task {i}", "session_id": None,
              "parent": {"run": "p", "lineage": ["boss"]}}  # fmt: skip
    return waits.Child(f"c{i}", "worker", f"task {i}", kwargs, "call_0", i, policy, retries)


def park(store: SessionStore, park: waits.Park, run_id: str = "p") -> waits.Effects:
    """Commit step 0 of ``run_id`` as a tool step that parks on ``park``."""
    effects = waits.Effects()
    record = StepRecord(0, StepKind.TOOL, "", (CallRecord("call_0", "delegate", {}, "wait"),))
    assert store.commit_step(
        run_id, record, new_run=NewRun(run_id, "boss", "go"), park=park, effects=effects
    )
    return effects


def fan_out(store: SessionStore, n: int, **kw: Any) -> waits.Effects:
    children = tuple(_child(i, **kw) for i in range(n))
    return park(store, waits.Park(WaitKind.CHILDREN, "call_0", _message("p"), children=children))


def end_child(store: SessionStore, i: int, answer: Any = None, *, failed: bool = False,
              child_id: str | None = None) -> waits.Effects:  # fmt: skip
    """Commit child ``i``'s one step, ending it (answer, or failed)."""
    effects = waits.Effects()
    run_id = child_id or f"c{i}"
    record = StepRecord(0, StepKind.FINAL, "x", tokens_in=3, tokens_out=2)
    new_run = NewRun(run_id, "worker", f"task {i}", parent_id="p", lineage=["boss"])
    if failed:
        store.commit_step(run_id, record, failed_reason="boom", error_type=ErrorType.MODEL_ERROR,
                          new_run=new_run, effects=effects)  # fmt: skip
    else:
        store.commit_step(run_id, record, final_answer=answer, new_run=new_run, effects=effects)
    return effects


def _end_in_child(url: str, i: int, barrier: Any, results: Any) -> None:
    store = SessionStore.from_url(url, migrate=False)
    try:
        barrier.wait(timeout=60)
        effects = end_child(store, i, f"answer {i}")
        results.put([r.run_id for r in effects.resumed])
    finally:
        store.close()


def test_children_ending_at_once_in_several_processes_resume_the_parent_once(
    store: SessionStore, store_url: str
) -> None:
    n = 6
    started = fan_out(store, n)
    assert [c.run_id for c in started.started] == [f"c{i}" for i in range(n)]
    assert store.load_run("p").status is RunStatus.WAITING
    barrier, results = SPAWN.Barrier(n), SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_end_in_child, args=(store_url, i, barrier, results)) for i in range(n)
    ]
    for proc in procs:
        proc.start()
    resumed = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert sorted(resumed, key=len) == [[]] * (n - 1) + [["p"]]  # one child handed it on
    parent = store.load_run("p")
    assert parent.status is RunStatus.RUNNING and parent.next_step == 1
    assert parent.child_tokens_in == 3 * n and parent.child_tokens_out == 2 * n
    assert parent.steps[0].tool_calls[0].result == [
        {"agent": "worker", "run_id": f"c{i}", "answer": f"answer {i}"} for i in range(n)
    ]


def test_the_last_child_resumes_the_parent_with_the_next_steps_message(
    store: SessionStore,
) -> None:
    fan_out(store, 2)
    assert not end_child(store, 1, "b")
    again = end_child(store, 1, "b")  # a duplicate of that commit: no effect
    assert not again
    effects = end_child(store, 0, "a")
    assert effects.resumed == [waits.Resumed("p", "boss", 1, _message("p"))]


def test_skip_keeps_a_failed_childs_error_as_its_result(store: SessionStore) -> None:
    fan_out(store, 2, policy=FailurePolicy.SKIP)
    end_child(store, 0, failed=True)
    assert end_child(store, 1, "fine").resumed
    result = store.load_run("p").steps[0].tool_calls[0].result
    assert result[0]["error"] == "boom" and result[0]["status"] == "failed"
    assert result[1]["answer"] == "fine"


def test_fail_ends_the_parent_and_cancels_the_other_children(store: SessionStore) -> None:
    fan_out(store, 3)
    end_child(store, 2, "done")
    effects = end_child(store, 0, failed=True)
    parent = store.load_run("p")
    assert parent.status is RunStatus.FAILED and parent.error_type is ErrorType.CHILD_FAILED
    ended = {e.run_id: e.status for e in effects.ended}
    # c1 had not started: it is stored cancelled, so its first message finds it ended.
    assert ended == {"p": RunStatus.FAILED, "c1": RunStatus.CANCELLED}
    assert store.load_run("c1").status is RunStatus.CANCELLED
    assert not end_child(store, 1, "late")  # its end no longer counts
    assert not effects.resumed


def test_retry_starts_a_failed_child_again_then_fails(store: SessionStore) -> None:
    fan_out(store, 1, policy=FailurePolicy.RETRY, retries=1)
    effects = end_child(store, 0, failed=True)
    [again] = effects.started
    assert again.run_id != "c0" and again.kwargs["input"] == "task 0"
    assert store.load_run("p").status is RunStatus.WAITING
    effects = end_child(store, 0, failed=True, child_id=again.run_id)
    assert [e.run_id for e in effects.ended] == ["p"]
    assert store.load_run("p").error_type is ErrorType.CHILD_FAILED


def _signal_in_child(url: str, barrier: Any, results: Any) -> None:
    store = SessionStore.from_url(url, migrate=False)
    try:
        barrier.wait(timeout=60)
        with store.write() as conn:
            wait = waits.open_wait(conn, "p")
            resumed = wait and waits.resume(conn, "p", wait.step, {"call_0": 1}, "signal",
                                            utc_now())  # fmt: skip
        results.put(bool(resumed))
    finally:
        store.close()


def test_a_signal_sent_twice_at_once_resumes_once(store: SessionStore, store_url: str) -> None:
    park(store, waits.Park(WaitKind.SIGNAL, "call_0", _message("p"), "approval"))
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    procs = [SPAWN.Process(target=_signal_in_child, args=(store_url, barrier, results))
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        proc.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
    assert outcomes == [False, True]
    with store.write() as conn:
        assert waits.delivered(conn, "p", "approval")
        assert waits.open_wait(conn, "p") is None


@pytest.mark.parametrize(
    ("policy", "status", "result"),
    [
        (TimeoutPolicy.FAIL, RunStatus.FAILED, "wait"),
        (TimeoutPolicy.CONTINUE, RunStatus.RUNNING, {"signal": "go", "timed_out": True}),
    ],
)
def test_a_signal_wait_times_out_by_its_policy(
    store: SessionStore, policy: TimeoutPolicy, status: RunStatus, result: Any
) -> None:
    soon = utc_now() + timedelta(seconds=30)
    park(store, waits.Park(WaitKind.SIGNAL, "call_0", _message("p"), "go", soon, policy))
    with store.write() as conn:
        assert waits.due(conn, utc_now(), None, 10) == []
        [due] = waits.due(conn, soon, ["boss"], 10)
        assert waits.due_by_agent(conn, soon) == {"boss": 1}
        effects = endings.fire(conn, due, soon)
        assert endings.fire(conn, due, soon) == waits.Effects()  # a second poller: nothing
    run = store.load_run("p")
    assert run.status is status and run.steps[0].tool_calls[0].result == result
    if policy is TimeoutPolicy.FAIL:
        assert run.error_type is ErrorType.WAIT_TIMED_OUT and effects.ended
    else:
        assert [r.run_id for r in effects.resumed] == ["p"]


def test_cancelling_a_parked_parent_cancels_its_children(store: SessionStore) -> None:
    fan_out(store, 2)
    record = StepRecord(0, StepKind.TOOL, "", (CallRecord("k", "search", {}, 1),))
    store.commit_step("c0", record, new_run=NewRun("c0", "worker", "t", parent_id="p"))
    with store.write() as conn:
        was, effects = endings.cancel(conn, "p", utc_now())
    assert was is RunStatus.WAITING
    assert store.load_run("p").status is RunStatus.CANCELLED
    assert store.load_run("c0").cancel_requested_at is not None  # running: stops at its step
    # Both are told: c0 runs, c1's first step may be under way unstored.
    assert effects.cancel == ["c0", "c1"]
    assert store.load_run("c1").status is RunStatus.CANCELLED  # not started: ended now
    rows = store.read(lambda conn: conn.execute(select(run_children.c.status)).scalars().all())
    assert set(rows) == {RunStatus.CANCELLED}
