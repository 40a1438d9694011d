"""Cancellation through real workers and the scripted model on Triton: a running run stops at
its next step boundary, a model call in flight is aborted, a parked run ends at once, a parent's
cancellation reaches its sub-agent runs; ``AsyncResult.get()`` raises RunCancelledError, and
cancelling a run that has ended changes nothing."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.celery_ext.app import create_celery
from app.celery_ext.backlog import read_backlog
from app.config import Settings
from app.errors import RunCancelledError, RunEndedError
from app.memory.records import RunStatus, StepKind
from app.producer.control import cancel, signal
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: busy
    tools: [word_count, wait_for_signal, delegate]
  - name: helper
"""


@pytest.fixture
def ccelery(settings: Settings, tmp_path: Path) -> Any:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    configured = settings.model_copy(update={"agents_file": agents_file})
    app = create_celery(configured)
    app.configured = configured  # type: ignore[attr-defined]
    yield app
    app.close()


def _until(predicate: Any, what: str, timeout_s: float = 60) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _status(store: Any, run_id: str) -> RunStatus | None:
    run = store.load_run(run_id)
    return None if run is None else run.status


def _start(start_worker: Any, celery: Any, agents: list[str]) -> None:
    start_worker(agents, settings=celery.configured, celery=celery)


def test_a_running_run_stops_at_its_next_step_and_raises_run_cancelled(
    ccelery: Any, start_worker: Any, store: Any
) -> None:
    _start(start_worker, ccelery, ["busy"])
    calls = " ".join('[tool:word_count {"text": "a b"}]' for _ in range(20))
    result = submit("busy", f"count {calls} [delay:200]", celery=ccelery)
    _until(lambda: (r := store.load_run(result.id)) and len(r.steps) >= 2, "two steps")
    done = cancel(result.id, celery=ccelery)
    assert done.was is RunStatus.RUNNING and done.cancelled
    with pytest.raises(RunCancelledError):
        result.get(timeout=60)
    run = store.load_run(result.id)
    assert run.status is RunStatus.CANCELLED and len(run.steps) < 21
    assert run.steps[-1].kind is StepKind.ERROR  # the boundary it stopped at
    again = cancel(result.id, celery=ccelery)  # a clear no-op
    assert again.was is RunStatus.CANCELLED and not again.cancelled


def test_a_parked_run_is_cancelled_at_once(ccelery: Any, start_worker: Any, store: Any) -> None:
    _start(start_worker, ccelery, ["busy"])
    result = submit("busy", '[tool:wait_for_signal {"name": "go"}]', celery=ccelery)
    _until(lambda: _status(store, result.id) is RunStatus.WAITING, "the run to park")
    assert cancel(result.id, celery=ccelery).cancelled
    with pytest.raises(RunCancelledError):
        result.get(timeout=30)
    with pytest.raises(RunEndedError):
        signal(result.id, "go", celery=ccelery)
    assert cancel(result.id, celery=ccelery).cancelled is False


def _counter(server: Any, name: str, model: str) -> float:
    """A counter the scripted model publishes on Triton's /metrics."""
    text = httpx.get(server.metrics_url, timeout=5).text
    match = re.search(rf'^{name}{{model="{model}"(?:,version="1")?}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_cancelling_a_parent_cancels_its_sub_agent_runs_and_aborts_their_model_calls(
    ccelery: Any, start_worker: Any, store: Any, redis_client: Any, triton_server: Any
) -> None:
    _start(start_worker, ccelery, ["busy", "helper"])
    tasks = [{"agent": "helper", "input": f"slow {i} [delay:30000]"} for i in range(2)]
    result = submit("busy", f"[tool:delegate {json.dumps({'tasks': tasks})}]", celery=ccelery)
    _until(
        lambda: (
            _status(store, result.id) is RunStatus.WAITING
            and read_backlog(redis_client, ["agent.helper"])["agent.helper"].unacked == 2
        ),
        "the parent to park and both children's model calls to be under way",
    )
    before = _counter(triton_server, "scripted_requests_cancelled", "ensemble")
    assert cancel(result.id, celery=ccelery).cancelled
    with pytest.raises(RunCancelledError):
        result.get(timeout=30)
    _until(
        lambda: (
            len(kids := store.list_runs(agent="helper")) == 2
            and all(k.status is RunStatus.CANCELLED for k in kids)
        ),
        "the children to end cancelled",
    )
    # Their 30 s model calls were aborted at the server, not waited out.
    _until(
        lambda: _counter(triton_server, "scripted_requests_cancelled", "ensemble") >= before + 2,
        "the scripted model to count both calls cancelled",
        timeout_s=20,
    )
    _until(
        lambda: read_backlog(redis_client, ["agent.helper"])["agent.helper"].total == 0,
        "the children's messages to be acknowledged",
        timeout_s=20,
    )
