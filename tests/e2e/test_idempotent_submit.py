"""Idempotent submit against a real worker: one key, one run, however often it is sent."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.celery_ext.app import create_celery
from app.config import LimitSettings
from app.constants import kv_key
from app.errors import IdempotencyConflictError
from app.producer.submit import submit, submit_many
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.e2e

COUNT = 'count [tool:counter_incr {"key": "orders"}]'


def test_a_repeated_submit_returns_the_first_run(celery_app, redis_client, start_worker, store):
    # Eight callers retry the same request at once, before any worker runs: one message.
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda _: submit("coder", COUNT, celery=celery_app, idempotency_key="order-17"),
                range(8),
            )
        )
    assert len({r.id for r in results}) == 1
    assert redis_client.llen("agent.coder") == 1
    start_worker(["coder"])
    assert results[0].get(timeout=60) == "Answer: 1"
    # Later repeats, also through submit_many, still name the same finished run.
    again = submit("coder", COUNT, celery=celery_app, idempotency_key="order-17")
    [batch] = submit_many(
        [{"agent": "coder", "input": COUNT, "idempotency_key": "order-17"}], celery=celery_app
    )
    assert again.id == batch.id == results[0].id and again.get(timeout=5) == "Answer: 1"
    assert [r.id for r in store.list_runs()] == [results[0].id]
    assert int(redis_client.get(kv_key("orders"))) == 1


def test_a_key_reused_for_a_different_run_is_refused(celery_app, redis_client):
    submit("coder", "first", celery=celery_app, idempotency_key="k1")
    with pytest.raises(IdempotencyConflictError, match="different fields"):
        submit("coder", "second", celery=celery_app, idempotency_key="k1")
    assert redis_client.llen("agent.coder") == 1


def test_after_the_window_the_key_starts_a_new_run(settings, redis_client):
    short = settings.model_copy(update={"limits": LimitSettings(idempotency_window_s=1)})
    app = create_celery(short)
    try:
        first = submit("coder", "hello", celery=app, idempotency_key="k2")
        time.sleep(1.5)
        second = submit("coder", "hello", celery=app, idempotency_key="k2")
    finally:
        app.close()
    assert first.id != second.id
    assert redis_client.llen("agent.coder") == 2


def test_the_cli_takes_an_idempotency_key(settings, start_worker, redis_client):
    start_worker(["coder"])
    runs = [
        agentq(settings, "submit", "coder", COUNT, "--idempotency-key", "cli-1") for _ in range(2)
    ]
    assert all(out.returncode == 0 for out in runs), runs[0].stderr
    assert runs[0].stdout.split()[1] == runs[1].stdout.split()[1]
    assert all(out.stdout.strip().endswith("Answer: 1") for out in runs)
