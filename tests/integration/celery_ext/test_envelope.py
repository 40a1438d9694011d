"""Messages built by the envelope (submit_many) are Celery's, field for field, and run."""

from __future__ import annotations

import base64
import json

import pytest

from app.celery_ext.envelope import message_headers, run_message
from app.constants import TASK_RUN_AGENT
from app.producer.submit import submit_many

pytestmark = pytest.mark.integration


def test_a_built_message_matches_what_apply_async_writes(celery_app, redis_client) -> None:
    kwargs = {"agent": "research", "input": {"q": '100% "quoted" \u00e9'}, "session_id": "s1"}
    headers = message_headers()
    celery_app.tasks[TASK_RUN_AGENT].apply_async(
        kwargs=kwargs, task_id="run-1", queue="agent.research", headers=headers,
        ignore_result=True,
    )  # fmt: skip
    theirs = json.loads(redis_client.rpop("agent.research"))
    ours = json.loads(
        run_message(
            "run-1", kwargs, "agent.research", headers,
            reply_to=theirs["properties"]["reply_to"], origin=theirs["headers"]["origin"],
        )
    )  # fmt: skip
    assert json.loads(ours.pop("body")) == json.loads(base64.b64decode(theirs.pop("body")))
    assert ours["headers"] == theirs["headers"]
    their_props, our_props = theirs.pop("properties"), ours.pop("properties")
    # What differs on purpose: no base64, a fresh tag.
    assert their_props.pop("body_encoding") == "base64"
    assert their_props.pop("delivery_tag") != our_props.pop("delivery_tag")
    assert our_props == their_props
    assert ours == theirs  # content type and encoding


def test_runs_enqueued_by_submit_many_run_to_their_answers(celery_app, start_worker) -> None:
    start_worker(["research"])
    runs = [{"agent": "research", "input": f"question {i}"} for i in range(20)]
    results = submit_many(runs, celery=celery_app, batch_size=7)
    # The scripted model answers with the input, upper-cased.
    assert [r.get(timeout=60) for r in results] == [f"Answer: QUESTION {i}" for i in range(20)]


def test_what_apply_async_and_send_task_write_passes_the_intake_check(
    celery_app, redis_client, redis_url
) -> None:
    from celery import Celery

    from app.celery_ext.intake import Intake, check, parse
    from tests.fixtures.envelopes import schema_accepts

    kwargs = {"agent": "research", "input": {"q": '\u00e9 "x"'}}
    celery_app.tasks[TASK_RUN_AGENT].apply_async(
        kwargs=kwargs, queue="agent.research", headers=message_headers(), countdown=5
    )
    celery_app.send_task(TASK_RUN_AGENT, kwargs=kwargs, queue="agent.research")
    plain = Celery("plain", broker=redis_url, set_as_current=False)  # another service's app
    plain.send_task(TASK_RUN_AGENT, args=["research", "hi"], queue="agent.research")
    plain.close()
    written = redis_client.lrange("agent.research", 0, -1)
    assert len(written) == 3
    intake = Intake(celery_app.tasks, 64 * 1024, 1024 * 1024)
    for raw in written:
        assert check(parse(raw), intake, len(raw)) is None, raw
        assert schema_accepts(raw, celery_app.tasks, 64 * 1024, 1024 * 1024)
