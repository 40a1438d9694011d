"""Generated messages pushed onto a live worker's queue: the envelope schema is the oracle.

What the schema accepts runs (the worker takes it and acknowledges it); the rest is
quarantined exactly once; the valid runs pushed between them all finish; the worker never
exits; nothing is left in ``unacked``.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.tasks import dead_letters as dead
from tests.fixtures.envelopes import messages, schema_accepts, valid_message
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

QUEUE = "agent.research"


@pytest.fixture
def worker(start_worker):
    return start_worker(["research"])


def _quarantined(redis_client) -> list[dead.DeadLetter]:
    letters = dead.list_letters(redis_client, dead.count(redis_client))
    return [letter for letter in letters if letter.quarantined]


@settings(
    max_examples=100, derandomize=True, deadline=None, database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large,
    ],
)  # fmt: skip
@given(generated=st.lists(messages(QUEUE), min_size=1, max_size=12))
def test_a_live_worker_runs_what_the_schema_accepts_and_quarantines_the_rest_once(
    generated, worker, celery_app, settings, redis_client
) -> None:
    limits = settings.worker.envelope_headers_max_bytes, settings.worker.envelope_body_max_bytes
    rejected = [raw for raw in generated if not schema_accepts(raw, celery_app.tasks, *limits)]
    valid = [valid_message(QUEUE, base64_body=bool(i % 2)) for i in range(2)]
    before = {letter.run_id for letter in _quarantined(redis_client)}
    # The valid runs between and after the generated ones, all in one push.
    redis_client.lpush(QUEUE, valid[0], *generated, valid[1])

    for raw in valid:
        run_id = json.loads(raw)["headers"]["id"]
        assert celery_app.AsyncResult(run_id).get(timeout=60).startswith("Answer: FUZZ")

    def drained() -> bool:
        return redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 0

    wait_for(drained, 60, "the queue and unacked to empty")
    new = [letter for letter in _quarantined(redis_client) if letter.run_id not in before]
    # Exactly once each: as many entries as rejected messages, of the same lengths.
    assert Counter(letter.raw_length for letter in new) == Counter(len(r) for r in rejected)
    assert all(letter.worker == worker.node and letter.queue == QUEUE for letter in new)
    assert worker.proc is not None and worker.proc.poll() is None  # still running
