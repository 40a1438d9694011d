"""Recovery passes on the real Redis and SQLite: what they publish again, and what they leave.

A stalled run here is one committed as a worker would (its steps in SQL) whose next step's
message is nowhere in Redis: as after a ``FLUSHALL``. The end-to-end experiment (workers,
a flush under load) is tests/e2e/test_redis_loss.py.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.celery_ext.backlog import UNACKED_KEY, priority_lists
from app.celery_ext.envelope import message_headers, reply_to_of, run_message, step_task_id
from app.config import DurabilitySettings, Settings
from app.constants import published_key
from app.memory.records import NewRun, StepKind, StepRecord, utc_now
from app.memory.recovery import record_accepted
from app.memory.schema import accepted_runs, steps
from app.memory.sessions import SessionStore
from app.tasks.recovery import LOCK_KEY, Recoverer, message_task_id

pytestmark = pytest.mark.integration

QUEUE = "agent.coder"


@pytest.fixture
def rsettings(redis_client, redis_url, sqlite_url) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=sqlite_url,
        durability=DurabilitySettings(recovery_grace_s=60),
    )


@pytest.fixture
def rcelery(rsettings: Settings):
    from app.celery_ext.app import create_celery

    app = create_celery(rsettings)
    yield app
    app.close()


@pytest.fixture
def rstore(rsettings: Settings):
    store = SessionStore.from_url(rsettings.database_url, migrate=True)
    yield store
    store.close()


def recoverer(celery, store) -> Recoverer:
    return Recoverer.for_app(celery, store)


def stalled_run(store: SessionStore, run_id: str, steps_done: int = 1, age_s: float = 120) -> None:
    """A running run with ``steps_done`` tool steps committed, the last ``age_s`` ago."""
    for step in range(steps_done):
        record = StepRecord(step, StepKind.TOOL, f"step {step}")
        new_run = NewRun(run_id, "coder", "count") if step == 0 else None
        assert store.commit_step(run_id, record, new_run=new_run)
    with store.write() as conn:
        old = utc_now() - timedelta(seconds=age_s)
        conn.execute(update(steps).where(steps.c.run_id == run_id).values(created_at=old))


def accepted_long_ago(store: SessionStore, run_id: str, age_s: float = 120) -> None:
    kwargs = {"agent": "coder", "input": "count", "session_id": None}
    record_accepted(store, [(run_id, "coder", kwargs)])
    with store.write() as conn:
        old = utc_now() - timedelta(seconds=age_s)
        conn.execute(
            update(accepted_runs).where(accepted_runs.c.id == run_id).values(created_at=old)
        )


def queued_task_ids(client) -> Counter[str]:
    found: Counter[str] = Counter()
    for name in priority_lists(QUEUE):
        for raw in client.lrange(name, 0, -1):
            found[message_task_id(raw)] += 1
    return found


def test_a_stalled_run_without_a_message_gets_its_next_step_published_once(
    rcelery, rstore, redis_client
):
    stalled_run(rstore, "run-a", steps_done=2)
    report = recoverer(rcelery, rstore).run_once()
    assert report is not None
    assert [(w.run_id, w.step) for w in report.published] == [("run-a", 2)]
    assert queued_task_ids(redis_client) == {step_task_id("run-a", 2): 1}
    raw = redis_client.lrange(QUEUE, 0, -1)[0]
    body = json.loads(raw)
    assert body["headers"]["task"] == "agentq.run_agent"
    assert redis_client.exists(published_key("run-a", 2))
    # The next pass finds the message (its marker): nothing published twice.
    again = recoverer(rcelery, rstore).run_once()
    assert again is not None and again.published == [] and again.stalled == 1
    assert queued_task_ids(redis_client) == {step_task_id("run-a", 2): 1}


def test_runs_with_their_message_somewhere_are_left_alone(rcelery, rstore, redis_client, rsettings):
    reply_to = reply_to_of(rcelery)
    # In the queue, no marker (a broker other than the markers' Redis would look like this).
    stalled_run(rstore, "in-queue")
    kwargs = {"agent": "coder", "session_id": None, "run_id": "in-queue", "step": 1}
    redis_client.lpush(
        QUEUE,
        run_message(
            step_task_id("in-queue", 1), kwargs, QUEUE, message_headers(), reply_to=reply_to
        ),
    )
    # Taken by a worker (unacknowledged), no marker.
    stalled_run(rstore, "taken")
    kwargs = {**kwargs, "run_id": "taken"}
    message = json.loads(
        run_message(step_task_id("taken", 1), kwargs, QUEUE, message_headers(), reply_to=reply_to)
    )
    redis_client.hset(UNACKED_KEY, "tag-1", json.dumps([message, QUEUE, QUEUE]))
    # Marked as published (the MULTI that pushed its message wrote the marker).
    stalled_run(rstore, "marked")
    redis_client.set(published_key("marked", 1), 1)
    # Moving: its last step is recent.
    stalled_run(rstore, "recent", age_s=1)
    # Finished runs are never looked at.
    stalled_run(rstore, "done")
    assert rstore.commit_step("done", StepRecord(1, StepKind.FINAL, "ok"), final_answer="ok")

    before = queued_task_ids(redis_client)
    report = recoverer(rcelery, rstore).run_once()
    assert report is not None
    assert report.stalled == 3 and report.lost == [] and report.published == []
    assert queued_task_ids(redis_client) == before


def test_accepted_runs_lost_before_a_worker_took_them_are_published_again(
    rcelery, rstore, redis_client
):
    accepted_long_ago(rstore, "lost-first")
    accepted_long_ago(rstore, "started")
    stalled_run(rstore, "started", age_s=1)  # its first step is stored: record dropped
    accepted_long_ago(rstore, "fresh", age_s=1)  # within the grace period
    report = recoverer(rcelery, rstore).run_once()
    assert report is not None
    assert [(w.run_id, w.step) for w in report.published] == [("lost-first", 0)]
    ids = queued_task_ids(redis_client)
    assert ids["lost-first"] == 1
    # The first message is the run's own: its task id is the run id, with the run's input.
    raw = next(r for r in redis_client.lrange(QUEUE, 0, -1) if message_task_id(r) == "lost-first")
    assert json.loads(raw)["headers"]["agentq_new_run"] is True
    with rstore.engine.connect() as conn:
        left = set(conn.execute(select(accepted_runs.c.id)).scalars())
    assert left == {"lost-first", "fresh"}
    # Listed in the queued-runs index again: the next pass leaves it alone.
    again = recoverer(rcelery, rstore).run_once()
    assert again is not None and again.published == []


def test_two_recoverers_at_once_never_publish_one_step_twice(rcelery, rstore, redis_client):
    run_ids = [f"run-{i}" for i in range(40)]
    for run_id in run_ids:
        stalled_run(rstore, run_id)
    barrier = threading.Barrier(4)
    reports = []

    def recover() -> None:
        barrier.wait()
        reports.append(recoverer(rcelery, rstore).run_once())

    threads = [threading.Thread(target=recover) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert queued_task_ids(redis_client) == {step_task_id(r, 1): 1 for r in run_ids}
    done = [r for r in reports if r is not None]
    assert sum(len(r.published) for r in done) == len(run_ids)
    assert not redis_client.exists(LOCK_KEY)  # given back


def test_a_recoverer_that_lost_the_lock_still_claims_each_step(rcelery, rstore, redis_client):
    # Two passes that both got through the lock (its lifetime ran out under the first) find
    # the same lost step: the per-step claim lets one of them publish it.
    stalled_run(rstore, "run-x")
    first, second = recoverer(rcelery, rstore), recoverer(rcelery, rstore)
    lost = first._pass(deadline=float("inf")).published
    redis_client.delete(published_key("run-x", 1))  # as if the first's marker were not seen
    assert second._pass(deadline=float("inf")).published == []
    assert [(w.run_id, w.step) for w in lost] == [("run-x", 1)]
    assert queued_task_ids(redis_client) == {step_task_id("run-x", 1): 1}


def test_agentq_maintenance_recover_does_one_pass_for_a_cronjob(
    rsettings, rstore, redis_client, monkeypatch
):
    from click.testing import CliRunner

    from app.cli import main

    stalled_run(rstore, "run-cron", steps_done=3)
    monkeypatch.setenv("AGENTQ_REDIS_URL", rsettings.redis_url)
    monkeypatch.setenv("AGENTQ_DATABASE_URL", rsettings.database_url)
    result = CliRunner().invoke(main, ["maintenance", "recover", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["locked"] is False and report["stalled"] == 1
    assert report["published"] == [{"run_id": "run-cron", "step": 3}]
    assert queued_task_ids(redis_client) == {step_task_id("run-cron", 3): 1}
    # Another recoverer holds the lock: the job says so and does nothing.
    redis_client.set(LOCK_KEY, "someone", px=10_000)
    result = CliRunner().invoke(main, ["maintenance", "recover"])
    assert result.exit_code == 0
    assert "another recoverer holds the lock" in result.output
