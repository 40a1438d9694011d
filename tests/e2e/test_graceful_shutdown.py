"""SIGTERM: a worker finishes the steps in flight, hands back the rest, and no step runs twice."""

from __future__ import annotations

import time

import pytest

from app.celery_ext.backlog import UNACKED_KEY
from app.constants import kv_key, lease_key
from app.producer.submit import submit_many
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

# A production-like visibility timeout: a handed-back step must not wait for it.
SLOW_REDELIVERY = {"AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "600"}


def counting_runs(n: int, steps: int, delay_ms: int) -> list[dict]:
    runs = []
    for r in range(n):
        tools = " ".join(f'[tool:counter_incr {{"key": "r{r}s{i}"}}]' for i in range(steps))
        runs.append({"agent": "coder", "input": f"count {tools} [delay:{delay_ms}]"})
    return runs


def test_sigterm_finishes_current_steps_and_the_runs_resume_elsewhere(
    celery_app, redis_client, start_worker, store
):
    first = start_worker(
        ["coder"], env={**SLOW_REDELIVERY, "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": "20"}
    )
    results = submit_many(counting_runs(4, steps=3, delay_ms=1500), celery=celery_app)

    wait_for(lambda: all(store.load_run(r.id) for r in results), 60, "every run's first step")
    wait_for(
        lambda: any(redis_client.exists(lease_key(r.id)) for r in results), 30, "a step in flight"
    )
    # Where each run stands when the worker is told to stop: steps committed, one in flight?
    before = {
        r.id: (len(store.load_run(r.id).steps), bool(redis_client.exists(lease_key(r.id))))
        for r in results
    }
    first.terminate()
    started = time.monotonic()
    assert first.proc.wait(timeout=30) == 0
    took = time.monotonic() - started
    committed = {r.id: len(store.load_run(r.id).steps) for r in results}
    # Each step in flight finished and committed; the runs' next steps wait in the queue.
    for run_id, (steps, in_flight) in before.items():
        assert committed[run_id] >= steps + in_flight, (before, committed)
    assert any(in_flight for _, in_flight in before.values())
    assert took < 20, f"exit took {took:.1f} s although every step could finish"
    assert not any(redis_client.exists(lease_key(r.id)) for r in results)

    second = start_worker(["coder"])
    assert [r.get(timeout=90) for r in results] == ["Answer: 1"] * 4
    for i, r in enumerate(results):
        run = store.load_run(r.id)
        assert [s.step for s in run.steps] == [0, 1, 2, 3]
        assert {s.worker for s in run.steps[: committed[r.id]]} == {first.node}
        assert {s.worker for s in run.steps[committed[r.id] :]} == {second.node}
        for step in range(3):
            assert int(redis_client.get(kv_key(f"r{i}s{step}"))) == 1


def test_a_step_longer_than_the_deadline_is_handed_back_at_once(
    celery_app, redis_client, start_worker, store
):
    first = start_worker(
        ["coder"], env={**SLOW_REDELIVERY, "AGENTQ_WORKER__SOFT_SHUTDOWN_TIMEOUT_S": "2"}
    )
    [result] = submit_many(counting_runs(1, steps=1, delay_ms=8000), celery=celery_app)
    # Taken by the worker (a first delivery holds no lease before its tool call, 8 s away).
    wait_for(
        lambda: redis_client.llen("agent.coder") == 0 and redis_client.hlen(UNACKED_KEY) == 1,
        30,
        "the step to start",
    )
    time.sleep(1)  # into its 8 s model call
    first.terminate()
    started = time.monotonic()
    assert first.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 10  # the deadline, not the 8 s step
    # Handed back: the message is on its queue again and the run's lease is free.
    assert redis_client.llen("agent.coder") == 1
    assert not redis_client.exists(lease_key(result.id))
    assert store.load_run(result.id) is None  # the cut step committed nothing

    second = start_worker(["coder"])
    assert result.get(timeout=60) == "Answer: 1"
    run = store.load_run(result.id)
    assert [(s.step, s.worker) for s in run.steps] == [(0, second.node), (1, second.node)]
    assert int(redis_client.get(kv_key("r0s0"))) == 1
