"""A worker, a producer and results on Redis Sentinel: runs finish before and after a failover.

The Redis is a master, its replica and two sentinels of the test's own
(:mod:`tests.fixtures.sentinel`); the worker is a real ``agentq worker`` process given the
``sentinel://`` URL by environment only, and keeps running through the failover.
"""

from __future__ import annotations

import pytest

from app.celery_ext.app import create_celery
from app.celery_ext.transport import TAKE
from app.config import DurabilitySettings, Settings, TritonSettings
from app.local.processes import wait_until
from app.memory.sessions import SessionStore
from app.ops.exporter import Exporter
from app.producer.submit import submit, submit_many
from tests.fixtures.sentinel import SentinelGroup

pytestmark = pytest.mark.e2e

RUN = 'add [tool:calculator {"expression": "20+22"}]'  # two steps: the tool call, the answer
# Four steps of 300 ms each: in flight when the master goes.
LONG_RUN = "add " + " ".join(f'[tool:calculator {{"expression": "{i}+1"}}]' for i in range(3))
LONG_RUN += " [delay:300]"
RUNS = 4
LOAD = 40
# A step cut off by the failover holds its run's lease this long (default: the step timeout).
FAST_RECOVERY = {"AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "3", "AGENTQ_WORKER__STEP_TIMEOUT_S": "3"}


@pytest.fixture
def sentinel_settings(sentinel_group: SentinelGroup, sqlite_url: str, triton_server) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=sentinel_group.url,
        database_url=sqlite_url,
        triton=TritonSettings(urls=[triton_server.grpc_url]),
    )


@pytest.fixture
def producer(sentinel_settings: Settings):
    app = create_celery(sentinel_settings)
    yield app
    app.close()


@pytest.mark.parametrize("fault", ["SENTINEL FAILOVER", "master SIGKILLed"])
def test_runs_submitted_after_a_failover_finish_on_the_same_worker(
    fault: str,
    sentinel_group: SentinelGroup,
    sentinel_settings: Settings,
    producer,
    start_worker,
) -> None:
    worker = start_worker(["research"], FAST_RECOVERY, settings=sentinel_settings, celery=producer)
    exporter = Exporter(sentinel_settings)
    before = [submit("research", RUN, celery=producer) for _ in range(RUNS)]
    assert [r.get(timeout=60) for r in before] == ["Answer: 42"] * RUNS
    assert b"agentq_exporter_redis_up 1.0" in exporter.metrics()[2]
    store = SessionStore.from_url(sentinel_settings.database_url, migrate=False)

    # Steps in flight at the fault: the worker's channel closes with messages to restore
    # and late acks still to come (kombu's Sentinel pool once failed that with
    # AttributeError, and the worker exited).
    in_flight = [submit("research", LONG_RUN, celery=producer) for _ in range(RUNS)]
    assert wait_until(lambda: all(store.load_run(r.id) for r in in_flight), 60)
    if fault == "SENTINEL FAILOVER":
        new = sentinel_group.failover()
    else:
        new = sentinel_group.kill_master()
    after = [submit("research", RUN, celery=producer) for _ in range(RUNS)]
    assert [r.get(timeout=90) for r in after] == ["Answer: 42"] * RUNS

    assert worker.proc is not None and worker.proc.poll() is None  # reconnected, not restarted
    try:
        for result in after:
            run = store.load_run(result.id)
            assert run is not None and run.status == "succeeded"
            assert {step.worker for step in run.steps} == {worker.node}
    finally:
        store.close()
    with sentinel_group.server(new).client() as master:
        # The later runs' results were written there, and the worker fetched with its script.
        keys = [f"celery-task-meta-{result.id}" for result in after]
        assert master.exists(*keys) == RUNS
        assert master.script_exists(TAKE.sha) == [True]
    # The exporter's clients, made before the failover, read the new master's queues.
    scrape = exporter.metrics()[2].decode()
    assert "agentq_exporter_redis_up 1.0" in scrape
    assert 'agentq_backlog{agent="research",queue="agent.research"}' in scrape


def test_runs_under_load_all_finish_after_the_master_dies_with_its_last_writes(
    sentinel_group: SentinelGroup, sentinel_settings: Settings, producer, start_worker
) -> None:
    """The master SIGKILLed mid-load, its replica not waited for: what it had not copied yet
    is lost with it, and recovery from the step store moves those runs again."""
    settings = sentinel_settings.model_copy(
        update={"durability": DurabilitySettings(recovery_grace_s=3.0, recovery_interval_s=1.0)}
    )
    worker = start_worker(["research"], FAST_RECOVERY, settings=settings, celery=producer)
    results = submit_many([{"agent": "research", "input": LONG_RUN}] * LOAD, celery=producer)
    store = SessionStore.from_url(settings.database_url, migrate=False)
    try:
        assert wait_until(lambda: _succeeded(store, results) >= LOAD // 10, 120)
        sentinel_group.kill_master(caught_up=False)
        assert wait_until(lambda: _succeeded(store, results) == LOAD, 180)
        for result in results:
            run = store.load_run(result.id)
            assert run is not None
            assert [step.step for step in run.steps] == list(range(4))  # each step once
    finally:
        store.close()
    assert worker.proc is not None and worker.proc.poll() is None


def _succeeded(store: SessionStore, results) -> int:
    runs = (store.load_run(result.id) for result in results)
    return sum(1 for run in runs if run is not None and run.status == "succeeded")
