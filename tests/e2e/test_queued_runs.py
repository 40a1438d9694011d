"""Queued runs with a real worker: a run submitted from Python is listed as queued until a
worker stores its first step (or ends it), and then leaves the queued-runs index. The echo
backend answers without a model server; the run of several steps uses Triton's scripted
model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from celery import Celery

from app.celery_ext.app import create_celery
from app.config import Settings
from app.constants import QUEUED_RUNS, queued_key
from app.errors import BudgetExceededError
from app.local.workers import WorkerProcess
from app.memory.sessions import SessionStore
from app.ops.runs import list_runs, run_detail
from app.producer.submit import submit, submit_many

pytestmark = pytest.mark.e2e


@pytest.fixture
def echo_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump({"agents": [{"name": "echo", "backend": "echo"}]}))
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentq.sqlite3'}",
        agents_file=agents,
    )


@pytest.fixture
def celery(echo_settings: Settings) -> Iterator[Celery]:
    app = create_celery(echo_settings)
    yield app
    app.close()


@pytest.fixture
def store(echo_settings: Settings) -> Iterator[SessionStore]:
    s = SessionStore.from_url(echo_settings.database_url, migrate=True)
    yield s
    s.close()


def test_a_run_leaves_the_index_when_its_first_step_is_stored(
    echo_settings: Settings,
    celery: Celery,
    store: SessionStore,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    one = submit("echo", "hello", celery=celery)
    many = submit_many([{"agent": "echo", "input": f"n{n}"} for n in range(3)], celery=celery)
    ids = [one.id, *many.ids]
    page = list_runs(store, redis_client)
    assert {(run.id, run.status) for run in page.items} == {(i, "queued") for i in ids}
    queued_detail = run_detail(store, redis_client, one.id)
    assert queued_detail is not None and queued_detail.status == "queued"

    worker = WorkerProcess(echo_settings, ["echo"], log_dir=tmp_path)
    try:
        worker.start(celery)
        assert one.get(timeout=60) == "hello"
        assert [result.get(timeout=60) for result in many] == ["n0", "n1", "n2"]
    finally:
        worker.stop()
    # The worker dropped each entry itself (not a reader's clean-up: none ran since).
    assert redis_client.hlen(QUEUED_RUNS) == 0
    assert redis_client.llen(queued_key("echo")) == 0
    listed = list_runs(store, redis_client).items
    assert {(run.id, run.status) for run in listed} == {(i, "succeeded") for i in ids}
    detail = run_detail(store, redis_client, one.id)
    assert detail is not None and detail.stored is not None
    assert detail.status == "succeeded" and detail.stored.answer == "hello"


def test_a_run_that_fails_at_its_first_step_leaves_the_index(
    echo_settings: Settings,
    celery: Celery,
    store: SessionStore,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # A one-token budget: the echo reply is longer, so the guardrail ends the run at step 0.
    run = submit(
        "echo", "a reply longer than one token", budget={"max_tokens_out": 1}, celery=celery
    )
    worker = WorkerProcess(echo_settings, ["echo"], log_dir=tmp_path)
    try:
        worker.start(celery)
        with pytest.raises(BudgetExceededError):
            run.get(timeout=60)
    finally:
        worker.stop()
    assert redis_client.hlen(QUEUED_RUNS) == 0
    [listed] = list_runs(store, redis_client).items
    assert (listed.id, listed.status, listed.error_type) == (run.id, "failed", "budget_exceeded")


def test_a_run_of_several_steps_leaves_the_index_after_its_first(
    celery_app: Celery, start_worker: Any, store: SessionStore, redis_client: redis.Redis
) -> None:
    run = submit("coder", 'count [tool:counter_incr {"key": "n"}]', celery=celery_app)
    assert [r.status for r in list_runs(store, redis_client).items] == ["queued"]
    start_worker(["coder"])
    assert run.get(timeout=60) == "Answer: 1"
    assert redis_client.hlen(QUEUED_RUNS) == 0
    [listed] = list_runs(store, redis_client).items
    assert (listed.id, listed.status, listed.steps) == (run.id, "succeeded", 2)
