"""Redis is not the record: runs finish when Redis loses their messages.

The experiment of issue 23, on a Redis of the test's own (no persistence): four-step runs
under load on a worker, then ``FLUSHALL`` (what a failover to a lagging replica, a crash with
``appendfsync everysec`` or an eviction does). Every run in SQL must finish, each step
committed once; and a run whose submit was acknowledged just before the flush, before any
worker took it, must finish too (``durability.accepted = "sql"``, the default).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.celery_ext.backlog import priority_lists
from app.config import DurabilitySettings, Settings, TritonSettings, WorkerSettings
from app.constants import TASK_RUN_AGENT
from app.local.processes import wait_until
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.memory.schema import accepted_runs
from app.memory.schema import runs as runs_table
from app.memory.schema import steps as steps_table
from app.memory.sessions import SessionStore
from app.producer.submit import submit, submit_many

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

RUNS = 120
TOOL_STEPS = 3  # three tool steps, then the answer: four steps a run
STEP_MS = 200  # each model call
GRACE_S = 3.0
INTERVAL_S = 1.0
DURABILITY_ENV = {
    "AGENTQ_DURABILITY__RECOVERY_GRACE_S": str(GRACE_S),
    "AGENTQ_DURABILITY__RECOVERY_INTERVAL_S": str(INTERVAL_S),
    "AGENTQ_HEALTH__PORT": "0",
}


@pytest.fixture
def lossy_redis():
    with RedisServer() as server:  # no persistence: a FLUSHALL loses everything
        yield server


@pytest.fixture
def loss_settings(lossy_redis: RedisServer, tmp_path: Path, triton_server) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=lossy_redis.url,
        database_url=f"sqlite:///{tmp_path / 'runs.sqlite3'}",
        triton=TritonSettings(urls=[triton_server.grpc_url]),
        worker=WorkerSettings(concurrency=32),
        durability=DurabilitySettings(recovery_grace_s=GRACE_S, recovery_interval_s=INTERVAL_S),
    )


@pytest.fixture
def loss_celery(loss_settings: Settings):
    from app.celery_ext.app import create_celery

    app = create_celery(loss_settings)
    yield app
    app.close()


@pytest.fixture
def store(loss_settings: Settings):
    store = SessionStore.from_url(loss_settings.database_url, migrate=True)
    yield store
    store.close()


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop(timeout_s=10)


def spawn(settings: Settings, workers: list[WorkerProcess], log_dir: Path) -> WorkerProcess:
    worker = WorkerProcess(settings, ["coder"], log_dir=log_dir, extra_env=DURABILITY_ENV)
    workers.append(worker)
    return worker.spawn()


def four_step_runs(n: int, tag: str) -> list[dict]:
    tools = " ".join(f'[tool:counter_incr {{"key": "{tag}-s{i}"}}]' for i in range(TOOL_STEPS))
    return [{"agent": "coder", "input": f"count {tools} [delay:{STEP_MS}]"} for _ in range(n)]


def statuses(store: SessionStore) -> dict[str, int]:
    query = select(runs_table.c.status, func.count()).group_by(runs_table.c.status)
    with store.engine.connect() as conn:
        return {str(status): int(n) for status, n in conn.execute(query).all()}


def steps_of_runs(store: SessionStore) -> dict[str, list[int]]:
    query = select(steps_table.c.run_id, steps_table.c.step).order_by(
        steps_table.c.run_id, steps_table.c.step
    )
    with store.engine.connect() as conn:
        found: dict[str, list[int]] = {}
        for run_id, step in conn.execute(query).all():
            found.setdefault(run_id, []).append(step)
        return found


def test_runs_in_sql_finish_after_redis_loses_everything_under_load(
    lossy_redis, loss_settings, loss_celery, store, workers, tmp_path
):
    worker = spawn(loss_settings, workers, tmp_path).wait_ready(loss_celery)
    results = submit_many(four_step_runs(RUNS, "load"), celery=loss_celery)
    client = lossy_redis.client()

    # Under way: some runs finished, most in the middle of their steps, some not started.
    assert wait_until(lambda: statuses(store).get("succeeded", 0) >= RUNS // 10, 120)
    before = statuses(store)
    client.flushall()
    flushed_at = time.monotonic()

    assert wait_until(lambda: statuses(store).get("succeeded", 0) == RUNS, 120), (
        f"before the flush {before}; now {statuses(store)}; "
        f"queue {[client.llen(q) for q in priority_lists('agent.coder')]}"
    )
    moving_again_s = time.monotonic() - flushed_at
    assert before.get("running", 0) > 0  # the flush hit runs in the middle of their steps

    # Each run's steps committed once each, in order (a step's row is keyed by its index).
    runs_steps = steps_of_runs(store)
    assert set(runs_steps) == {r.id for r in results}
    assert all(steps == list(range(TOOL_STEPS + 1)) for steps in runs_steps.values())
    # The records of accepted runs are dropped once their runs are stored.
    assert wait_until(lambda: _count(store, accepted_runs) == 0, 30)
    assert worker.proc is not None and worker.proc.poll() is None
    print(f"\nredis loss: {before} at the flush; all {RUNS} succeeded {moving_again_s:.1f} s after")


@pytest.mark.parametrize("how", ["submit", "delay"])
def test_a_run_acknowledged_then_lost_by_redis_before_any_worker_took_it_still_finishes(
    how, lossy_redis, loss_settings, loss_celery, store, workers, tmp_path
):
    text = 'count [tool:counter_incr {"key": "one"}]'
    if how == "submit":
        result = submit("coder", text, celery=loss_celery)
    else:  # a plain Celery call on the task: accepted means recorded all the same
        result = loss_celery.tasks[TASK_RUN_AGENT].delay(agent="coder", input=text)
    lossy_redis.client().flushall()  # no worker yet: the message is gone
    spawn(loss_settings, workers, tmp_path).wait_ready(loss_celery)
    assert result.get(timeout=60) == "Answer: 1"
    run = store.load_run(result.id)
    assert run is not None and run.status == "succeeded"
    assert [s.step for s in run.steps] == [0, 1]


def _count(store: SessionStore, table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())
