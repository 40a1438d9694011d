"""Redis forgets its Lua scripts (a restart, SCRIPT FLUSH) while a worker drains a queue: the
fetch and the lease release load them again, and every run still finishes."""

from __future__ import annotations

import threading

import pytest

from app.celery_ext.transport import TAKE
from app.constants import DEAD_LETTERS
from app.producer.submit import submit_many
from app.tasks.leases import RELEASE

pytestmark = pytest.mark.integration

RUNS = 300
QUEUE = "agent.research"


def _calc(i: int) -> str:
    return f'compute [tool:calculator {{"expression": "{i} * 2"}}]'


def test_every_run_finishes_when_the_script_cache_is_flushed_mid_drain(
    celery_app, redis_client, start_worker, store
) -> None:
    # Two steps a run (a tool call, then the answer): fetches, hand-ons and lease releases.
    results = submit_many(
        [{"agent": "research", "input": _calc(i)} for i in range(RUNS)], celery=celery_app
    )
    worker = start_worker(["research"])
    drained = threading.Event()
    backlog_at_flush: list[int] = []

    def flush_while_draining() -> None:
        while not drained.is_set():
            redis_client.script_flush()
            backlog_at_flush.append(redis_client.llen(QUEUE) + redis_client.hlen("unacked"))
            drained.wait(0.05)

    flusher = threading.Thread(target=flush_while_draining, daemon=True)
    flusher.start()
    try:
        answers = [r.get(timeout=120) for r in results]
    finally:
        drained.set()
        flusher.join()
    assert sum(1 for backlog in backlog_at_flush if backlog) >= 3, backlog_at_flush
    assert answers == [f"Answer: {i * 2}" for i in range(RUNS)]
    assert {store.load_run(r.id).status for r in results} == {"succeeded"}
    assert redis_client.hlen(DEAD_LETTERS) == 0
    assert worker.proc.poll() is None  # no worker died of a NOSCRIPT reply
    # The worker runs its scripts by digest and loads them itself once Redis lost them.
    redis_client.script_flush()
    assert (
        submit_many([{"agent": "research", "input": _calc(7)}], celery=celery_app)[0].get(
            timeout=60
        )
        == "Answer: 14"
    )
    assert redis_client.script_exists(TAKE.sha, RELEASE.sha) == [True, True]
