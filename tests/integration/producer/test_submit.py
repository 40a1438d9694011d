"""Producers: delay(), submit(), submit_many(), send_task() from a plain Celery app."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from app.constants import DEFAULT_TENANT, TASK_RUN_AGENT, idempotency_key
from app.errors import InvalidInputError, PayloadTooLargeError, RunFailedError, UnknownAgentError
from app.producer.submit import submit, submit_many
from app.tasks import dead_letters
from tests.fixtures import steps as recorded

pytestmark = pytest.mark.integration


def _queue_state(client):
    return {key: client.llen(key) for key in (b"agent.research", b"agent.coder")}, client.dbsize()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"agent": "nope", "input": "hi"}, UnknownAgentError),
        ({"agent": "research", "input": ""}, InvalidInputError),
        ({"agent": "research", "input": {"at": object()}}, InvalidInputError),
        ({"agent": "research", "input": "x" * 70_000}, PayloadTooLargeError),
    ],
)
def test_bad_input_raises_at_submit_and_leaves_redis_untouched(
    celery_app, redis_client, kwargs, error
):
    before = _queue_state(redis_client)
    with pytest.raises(error):
        submit(**kwargs, celery=celery_app)
    assert _queue_state(redis_client) == before


def test_one_bad_item_in_submit_many_enqueues_nothing(celery_app, redis_client):
    runs = [{"agent": "research", "input": f"q{i}"} for i in range(50)]
    runs.append({"agent": "research", "input": "ok", "priority": 3})
    with pytest.raises(InvalidInputError, match="unknown fields"):
        submit_many(runs, celery=celery_app)
    assert redis_client.dbsize() == 0


def test_submit_many_enqueues_every_run_on_its_queue(celery_app, redis_client):
    runs = [{"agent": "research" if i % 3 else "coder", "input": f"q{i}"} for i in range(600)]
    results = submit_many(runs, celery=celery_app, batch_size=128)
    assert len({r.id for r in results}) == 600
    assert redis_client.llen("agent.research") == 400
    assert redis_client.llen("agent.coder") == 200
    body = json.loads(redis_client.lindex("agent.coder", -1))
    assert body["content-type"] == "application/json"
    assert body["headers"]["task"] == TASK_RUN_AGENT


def test_delay_routes_by_agent_and_get_returns_the_final_answer(celery_app, start_worker):
    run_agent = celery_app.tasks[TASK_RUN_AGENT]
    with pytest.raises(UnknownAgentError):
        run_agent.delay(agent="nope", input="x")
    start_worker(["research"])
    result = run_agent.delay(
        agent="research",
        input='two [tool:calculator {"expression": "6*7"}] [tool:word_count {"text": "a b c"}]',
        session_id="s-1",
    )
    assert result.get(timeout=60) == "Answer: 3"


def test_a_failed_run_raises_its_reason(celery_app, start_worker, store):
    start_worker(["research"])
    result = submit("research", "fail please [error:model exploded]", celery=celery_app)
    with pytest.raises(RunFailedError, match="model exploded"):
        result.get(timeout=60)
    assert store.load_run(result.id).status == "failed"


PLAIN_PRODUCER = """
import json, sys
from celery import Celery
app = Celery(broker=sys.argv[1], backend=sys.argv[1])
app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"])
result = app.send_task("agentq.run_agent", kwargs={"agent": "research",
    "input": 'sum [tool:calculator {"expression": "40 + 2"}]'}, queue="agent.research")
answer = result.get(timeout=60)
assert not any(name == "app" or name.startswith("app.") for name in sys.modules), "imported agentq"
print(json.dumps({"id": result.id, "answer": answer}))
"""


def test_a_producer_that_does_not_import_agentq_uses_send_task(
    settings, start_worker, store, tmp_path
):
    start_worker(["research"])
    # Run from an empty folder so the project package is not importable at all.
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_PRODUCER, settings.redis_url],
        capture_output=True, text=True, timeout=90, cwd=tmp_path, check=True,
    )  # fmt: skip
    reply = json.loads(out.stdout)
    assert reply["answer"] == "Answer: 42"
    assert [recorded.tool(s) for s in store.load_run(reply["id"]).steps] == ["calculator", None]


def test_a_pickled_message_is_quarantined_and_never_runs(
    celery_app, redis_client, start_worker, store
):
    worker = start_worker(["research"])
    pickled = celery_app.send_task(
        TASK_RUN_AGENT,
        kwargs={"agent": "research", "input": "pickled"},
        queue="agent.research",
        serializer="pickle",
    )
    good = submit("research", "json run", celery=celery_app)
    assert good.get(timeout=60) == "Answer: JSON RUN"
    assert store.load_run(pickled.id) is None
    assert redis_client.llen("agent.research") == 0
    # Never deserialized: the fetch quarantined it, before Celery saw it.
    (letter,) = dead_letters.list_letters(redis_client)
    assert (letter.kind, letter.reason) == ("quarantined", "content_type")
    assert letter.worker == worker.node


def test_a_run_whose_model_server_never_answers_fails_after_its_retries(
    celery_app, start_worker, store
):
    from app.local.processes import free_port

    closed = f"127.0.0.1:{free_port()}"  # nothing listens there
    start_worker(
        ["research"],
        env={
            "AGENTQ_TRITON__URLS": f'["{closed}"]',
            "AGENTQ_WORKER__INFERENCE_RETRIES": "2",
            "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": "0.2",
        },
    )
    result = submit("research", "anyone there?", celery=celery_app)
    with pytest.raises(RunFailedError, match="still failing after 2 retries"):
        result.get(timeout=60)
    run = store.load_run(result.id)
    assert run.status == "failed" and run.steps == []


def test_submit_many_failing_midway_keeps_the_keys_of_the_runs_it_enqueued(
    celery_app, redis_client
):
    runs = [
        {"agent": "research" if i < 20 else "coder", "input": f"q{i}", "idempotency_key": f"k{i}"}
        for i in range(30)
    ]
    redis_client.set("agent.coder", "not a list")  # the third batch's LPUSH fails
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        submit_many(runs, celery=celery_app, batch_size=10)
    assert redis_client.llen("agent.research") == 20  # the first two batches went in
    held = [
        bool(redis_client.exists(idempotency_key(DEFAULT_TENANT, r["agent"], r["idempotency_key"])))
        for r in runs
    ]
    assert held == [True] * 20 + [False] * 10
    redis_client.delete("agent.coder")
    results = submit_many(runs, celery=celery_app, batch_size=10)  # the caller retries
    assert redis_client.llen("agent.research") == 20  # not enqueued twice
    assert redis_client.llen("agent.coder") == 10
    queued = {json.loads(m)["headers"]["id"] for m in redis_client.lrange("agent.research", 0, -1)}
    assert queued == set(results.ids[:20])
