"""Dead letters with real workers: retries exhausted or a poison message, then an operator's
``agentq dlq list|show|replay|purge``. Nothing leaves the DLQ without a command."""

from __future__ import annotations

import json

import pytest

from app.constants import TASK_RUN_AGENT
from app.errors import DeadLetteredError
from app.local.processes import free_port
from app.producer.submit import submit
from app.tasks import dead_letters as dlq
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.e2e

UNREACHABLE = {
    "AGENTQ_TRITON__URLS": "",  # set per test: a port nobody serves
    "AGENTQ_WORKER__INFERENCE_RETRIES": "2",
    "AGENTQ_WORKER__RETRY_BACKOFF_MAX_S": "0.2",
}


def test_exhausted_retries_dead_letter_the_run_and_replay_finishes_it(
    settings, celery_app, start_worker, store, redis_client
) -> None:
    env = {**UNREACHABLE, "AGENTQ_TRITON__URLS": json.dumps([f"127.0.0.1:{free_port()}"])}
    broken = start_worker(["research"], env=env)
    result = submit(
        "research", 'will wait [tool:calculator {"expression": "6*7"}]', celery=celery_app
    )
    with pytest.raises(DeadLetteredError, match="dead-lettered"):
        result.get(timeout=60)
    (letter,) = dlq.list_letters(redis_client)
    assert (letter.run_id, letter.agent, letter.step, letter.kind) == (
        result.id,
        "research",
        0,
        dlq.DeadLetterKind.RETRIES_EXHAUSTED,
    )
    assert letter.retries == 2
    assert "still failing after 2 retries: NoReplicaAvailableError" in letter.reason
    assert letter.kwargs["input"].startswith("will wait")
    run = store.load_run(result.id)
    assert (run.status, run.error_type) == ("failed", "dead_lettered")

    listed = agentq(settings, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert result.id in listed.stdout and "1 dead letter(s) in all" in listed.stdout

    # The model server is back (a worker that reaches it); the operator replays the run.
    broken.stop()
    start_worker(["research"])
    assert dlq.count(redis_client) == 1  # still there: only a command takes it out
    replayed = agentq(settings, "dlq", "replay", result.id)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed run {result.id} from step 0" in replayed.stdout
    assert dlq.count(redis_client) == 0
    # A fresh handle: the first one cached the failure it already returned.
    again = celery_app.AsyncResult(result.id)
    assert again.get(timeout=60) == "Answer: 42"
    run = store.load_run(result.id)
    assert (run.status, run.error_type, run.answer) == ("succeeded", None, "Answer: 42")
    assert [s.step for s in run.steps] == [0, 1]


def test_a_poison_message_is_dead_lettered_with_its_traceback_and_purged_on_command(
    settings, celery_app, start_worker, store, redis_client
) -> None:
    start_worker(["research"])
    # A producer in another service sends arguments this version does not know.
    kwargs = {"agent": "research", "input": "hi", "colour": "red", "api_key": "s3cret"}
    bad = celery_app.send_task(TASK_RUN_AGENT, kwargs=kwargs, queue="agent.research")
    with pytest.raises(DeadLetteredError, match="poison"):
        bad.get(timeout=60)
    letter = dlq.get(redis_client, bad.id)
    assert letter is not None and letter.kind == dlq.DeadLetterKind.POISON and letter.retries == 0
    assert "unexpected arguments ['api_key', 'colour']" in letter.reason
    assert "Traceback (most recent call last)" in letter.traceback
    assert store.load_run(bad.id).error_type == "dead_lettered"

    shown = agentq(settings, "dlq", "show", bad.id)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["kwargs"]["colour"] == "red"
    assert "s3cret" not in shown.stdout  # masked when shown; kept as sent for a replay
    assert letter.kwargs["api_key"] == "s3cret"

    refused = agentq(settings, "dlq", "purge", "--all")  # asks first; no answer, no purge
    assert refused.returncode != 0 and dlq.count(redis_client) == 1
    purged = agentq(settings, "dlq", "purge", bad.id, "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "purged 1 dead letter(s)" in purged.stdout
    assert dlq.count(redis_client) == 0
    missing = agentq(settings, "dlq", "replay", bad.id)
    assert missing.returncode == 1 and "not in the dead-letter queue" in missing.stdout
