"""Durable waits through a real worker, the scripted model on Triton and a Redis of the test's
own without persistence: a run parked on a signal or a timer survives the worker stopping and
Redis restarting empty (the parked run is a row in SQL), and resumes once; timeouts follow
their policy; each bad signal gets its error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import Settings, TritonSettings
from app.constants import TASK_RUN_AGENT
from app.errors import (
    NotWaitingError,
    RunEndedError,
    SignalTooLargeError,
    UnknownRunError,
    WaitTimedOutError,
)
from app.local.redis import RedisServer
from app.memory.records import RunStatus
from app.producer.control import signal
from app.producer.submit import submit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

AGENTS = """\
agents:
  - name: approver
    tools: [wait_for_signal, sleep]
"""
FAST = {"AGENTQ_ORCHESTRATION__TIMER_POLL_S": "0.2", "AGENTQ_HEALTH__PORT": "0"}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:  # no persistence: a restart starts it empty
        yield server


@pytest.fixture
def wsettings(own_redis: RedisServer, tmp_path: Path, triton_server: Any) -> Settings:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    return Settings(
        _env_file=None,
        redis_url=own_redis.url,
        database_url=f"sqlite:///{tmp_path / 'runs.sqlite3'}",
        triton=TritonSettings(urls=[triton_server.grpc_url]),
        agents_file=agents_file,
    )


@pytest.fixture
def wcelery(wsettings: Settings) -> Iterator[Any]:
    app = create_celery(wsettings)
    yield app
    app.close()


def _status(store: Any, run_id: str) -> RunStatus | None:
    run = store.load_run(run_id)
    return None if run is None else run.status


def _wait_status(store: Any, run_id: str, status: RunStatus, timeout_s: float = 60) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if _status(store, run_id) is status:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} is {_status(store, run_id)}, not {status}")


def _call(tool: str, **args: Any) -> str:
    return f"[tool:{tool} {json.dumps(args)}]"


def test_a_parked_run_survives_its_worker_and_redis_and_resumes_on_its_signal_once(
    wsettings: Settings, wcelery: Any, own_redis: RedisServer, start_worker: Any
) -> None:
    store = context_of(wcelery).store
    worker = start_worker(["approver"], FAST, settings=wsettings, celery=wcelery)
    result = submit("approver", f"pay 5 {_call('wait_for_signal', name='approval')}",
                    celery=wcelery)  # fmt: skip
    _wait_status(store, result.id, RunStatus.WAITING)
    with pytest.raises(NotWaitingError, match="waiting for signal 'approval'"):
        signal(result.id, "rejection", celery=wcelery)
    with pytest.raises(SignalTooLargeError):
        signal(result.id, "approval", "x" * 70_000, celery=wcelery)
    with pytest.raises(UnknownRunError):
        signal("no-such-run", "approval", celery=wcelery)

    worker.stop()
    own_redis.stop()  # every process and Redis go; Redis comes back empty
    own_redis.start()
    after = create_celery(wsettings)  # a producer of after the restart
    try:
        start_worker(["approver"], FAST, settings=wsettings, celery=after)
        assert _status(store, result.id) is RunStatus.WAITING
        sent = signal(result.id, "approval", {"by": "ana"}, celery=after)
        again = signal(result.id, "approval", {"by": "ana"}, celery=after)
        assert (sent.resumed, again.resumed) == (True, False)
        answer = str(after.tasks[TASK_RUN_AGENT].AsyncResult(result.id).get(timeout=60))
        with pytest.raises(RunEndedError):
            signal(result.id, "other", celery=after)
    finally:
        after.close()
    assert json.loads(answer.removeprefix("Answer: ")) == {
        "signal": "approval",
        "data": {"by": "ana"},
    }
    run = store.load_run(result.id)
    assert [s.step for s in run.steps] == [0, 1]  # resumed once


def test_a_timer_fires_after_the_worker_and_redis_restarted(
    wsettings: Settings, wcelery: Any, own_redis: RedisServer, start_worker: Any
) -> None:
    store = context_of(wcelery).store
    worker = start_worker(["approver"], FAST, settings=wsettings, celery=wcelery)
    result = submit("approver", f"later {_call('sleep', seconds=3)}", celery=wcelery)
    _wait_status(store, result.id, RunStatus.WAITING)
    worker.stop()
    own_redis.stop()
    own_redis.start()
    after = create_celery(wsettings)
    try:
        start_worker(["approver"], FAST, settings=wsettings, celery=after)
        answer = after.tasks[TASK_RUN_AGENT].AsyncResult(result.id).get(timeout=60)
    finally:
        after.close()
    assert json.loads(str(answer).removeprefix("Answer: ")) == {"slept": True}
    run = store.load_run(result.id)
    parked_at, resumed_at = run.steps[0].created_at, run.steps[1].created_at
    assert (resumed_at - parked_at).total_seconds() >= 3


def test_a_signal_wait_times_out_by_its_policy(
    wsettings: Settings, wcelery: Any, start_worker: Any
) -> None:
    start_worker(["approver"], FAST, settings=wsettings, celery=wcelery)
    go_on = submit(
        "approver",
        _call("wait_for_signal", name="ok", timeout_s=1, on_timeout="continue"),
        celery=wcelery,
    )
    give_up = submit("approver", _call("wait_for_signal", name="ok", timeout_s=1), celery=wcelery)
    assert json.loads(str(go_on.get(timeout=60)).removeprefix("Answer: ")) == {
        "signal": "ok",
        "timed_out": True,
    }
    with pytest.raises(WaitTimedOutError, match="timed out waiting for signal 'ok'"):
        give_up.get(timeout=60)
