"""A worker SIGKILLed mid-run: a fresh worker finishes the run and no finished step runs again."""

from __future__ import annotations

import time

import pytest

from app.constants import kv_key
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

STEPS = 6
# Short redelivery and lease so the test does not wait the production defaults out.
FAST_RECOVERY = {"AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "3", "AGENTQ_WORKER__STEP_TIMEOUT_S": "3"}


def _wait_for(predicate, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkilled_worker_run_resumes_elsewhere_without_repeating_steps(
    celery_app, redis_client, start_worker, store
):
    tools = " ".join(f'[tool:counter_incr {{"key": "k{i}"}}]' for i in range(STEPS))
    result = submit("coder", f"count {tools} [delay:300]", celery=celery_app)
    first = start_worker(["coder"], env=FAST_RECOVERY)

    def two_steps_done():
        run = store.load_run(result.id)
        return run if run and len(run.steps) >= 2 else None

    _wait_for(two_steps_done, 60, "two committed steps")
    assert result.state == "STARTED"
    first.kill()
    before = store.load_run(result.id)  # re-read: a step may have committed just before the kill
    finished_before = {s.step: s for s in before.steps}
    assert 2 <= len(finished_before) < STEPS + 1

    second = start_worker(["coder"], env=FAST_RECOVERY)
    assert result.get(timeout=90) == f"Answer: {1}"  # the last tool returned counter value 1

    run = store.load_run(result.id)
    assert run.status == "succeeded"
    assert [s.step for s in run.steps] == list(range(STEPS + 1))
    for index, step in finished_before.items():
        # Committed before the kill: untouched, done by the first worker, side effect once.
        assert run.steps[index] == step
        assert step.worker == first.node
        assert int(redis_client.get(kv_key(f"k{index}"))) == 1
    assert {s.worker for s in run.steps[len(finished_before) :]} == {second.node}
    for i in range(STEPS):
        # Even the step in flight at the kill counted once: the tool's effect is per step.
        assert int(redis_client.get(kv_key(f"k{i}"))) == 1
