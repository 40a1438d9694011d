"""Runs on Triton through the scripted model's chat template: a tool call that does not parse
gets one repair turn in its step, a second bad one fails the run with the reason."""

from __future__ import annotations

import pytest

from app.errors import RunFailedError
from app.producer.submit import submit
from app.tasks.relay import ATTEMPT, TOKEN

pytestmark = pytest.mark.e2e


def test_a_broken_call_is_repaired_in_its_step_and_the_stream_shows_both_attempts(
    celery_app, start_worker, store
) -> None:
    start_worker(["research"])
    user = 'add [badtool:calculator {"expression": "20+22"}]'
    result = submit("research", user, stream=True, celery=celery_app)
    events = list(result.events(timeout=60))
    assert result.get(timeout=60) == "Answer: 42"
    # Step 0 streamed the bad reply, then (a new attempt) the repaired one.
    assert [e.step for e in events if e.kind == ATTEMPT] == [0, 0, 1]
    step0 = "".join(e.text for e in events if e.kind == TOKEN and e.step == 0)
    assert step0.endswith('"arguments": {"expression": "20+22"}} </tool_call>')
    steps = store.load_run(result.id).steps
    assert [(s.kind, [c.result for c in s.tool_calls]) for s in steps] == [
        ("tool", [42]),
        ("final", []),
    ]


def test_a_call_broken_twice_fails_the_run_with_the_reason(celery_app, start_worker, store):
    start_worker(["research"])
    result = submit("research", "[brokentool:calculator]", celery=celery_app)
    with pytest.raises(RunFailedError, match="tool call did not parse: call 1 is not valid JSON"):
        result.get(timeout=60)
    run = store.load_run(result.id)
    assert run.error_type == "model_error" and [s.kind for s in run.steps] == ["error"]
