"""Runs go to their agent type's queue and only that type's worker consumes them."""

from __future__ import annotations

import pytest

from app.producer.submit import submit_many
from tests.fixtures import steps as recorded

pytestmark = pytest.mark.integration


def _calc(expr: str) -> str:
    return f'compute [tool:calculator {{"expression": "{expr}"}}]'


def test_each_agent_type_is_consumed_only_by_its_worker(
    celery_app, redis_client, start_worker, store
):
    research = [{"agent": "research", "input": _calc(f"{i} * 3")} for i in range(6)]
    coder = [{"agent": "coder", "input": f"explain item {i}"} for i in range(4)]
    results = submit_many(research + coder, celery=celery_app)
    assert redis_client.llen("agent.research") == 6
    assert redis_client.llen("agent.coder") == 4

    research_worker = start_worker(["research"])
    for result in results[:6]:
        result.get(timeout=60)
    # The research worker drained its list and never touched coder's.
    assert redis_client.llen("agent.research") == 0
    assert redis_client.llen("agent.coder") == 4

    coder_worker = start_worker(["coder"])
    answers = [r.get(timeout=60) for r in results]
    assert answers[:6] == [f"Answer: {i * 3}" for i in range(6)]
    assert answers[6:] == [f"Answer: EXPLAIN ITEM {i}" for i in range(4)]
    assert redis_client.llen("agent.coder") == 0

    for result, expected_worker, steps in (
        *((r, research_worker.node, 2) for r in results[:6]),
        *((r, coder_worker.node, 1) for r in results[6:]),
    ):
        run = store.load_run(result.id)
        assert run.status == "succeeded"
        assert [s.step for s in run.steps] == list(range(steps))
        assert {s.worker for s in run.steps} == {expected_worker}
    # Only the run ids carry results; later steps' messages leave no result keys behind.
    assert sorted(redis_client.keys("celery-task-meta-*")) == sorted(
        f"celery-task-meta-{r.id}".encode() for r in results
    )
    first = store.load_run(results[0].id)
    assert recorded.tool(first.steps[0]) == "calculator"
    assert recorded.result(first.steps[0]) == 0
    assert first.steps[1].kind == "final"
    assert first.answer == "Answer: 0"
