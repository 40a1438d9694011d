"""A step message naming a run that was never started, through a live worker: dead-lettered,
and its sender's ``AsyncResult`` fails at once; a stale copy of a real run's step is dropped."""

from __future__ import annotations

import pytest

from app.celery_ext.context import context_of
from app.constants import TASK_RUN_AGENT
from app.errors import NoSuchRunError, QuarantinedMessageError
from app.producer.submit import submit
from app.tasks import dead_letters as dlq

pytestmark = pytest.mark.e2e


def test_a_step_of_a_run_never_started_fails_its_result_and_is_dead_lettered(
    celery_app, start_worker, store, redis_client
) -> None:
    start_worker(["research"], concurrency=1)  # one thread: messages run in the order sent
    real = submit("research", 'add [tool:calculator {"expression": "20+22"}]', celery=celery_app)
    assert real.get(timeout=60) == "Answer: 42"

    # A stale copy of the finished run's step 1, then the same arguments for an unknown run.
    copied = {"agent": "research", "run_id": real.id, "step": 1}
    celery_app.send_task(TASK_RUN_AGENT, kwargs=copied, queue="agent.research")
    ghost = {**copied, "run_id": "ghost-run"}
    sent = celery_app.send_task(TASK_RUN_AGENT, kwargs=ghost, queue="agent.research")
    with pytest.raises(NoSuchRunError, match="no run 'ghost-run': step 1 of a run that was never"):
        sent.get(timeout=30)  # not the caller's own timeout: the worker answers

    (letter,) = dlq.list_letters(redis_client)  # the stale copy left no dead letter
    assert (letter.run_id, letter.step, letter.kind, letter.task_id) == (
        "ghost-run",
        1,
        dlq.DeadLetterKind.NO_SUCH_RUN,
        sent.id,
    )
    assert store.load_run("ghost-run") is None
    registry = context_of(celery_app).registry
    with pytest.raises(QuarantinedMessageError, match="nothing to replay"):
        dlq.replay(celery_app, registry, store, redis_client, "ghost-run")
    assert dlq.count(redis_client) == 1  # refused, not dropped: only purge takes it out
    run = store.load_run(real.id)
    assert (run.status, run.answer, [s.step for s in run.steps]) == (
        "succeeded",
        "Answer: 42",
        [0, 1],
    )
