"""Malformed messages on a queue two workers serve: quarantined, and nothing else held up."""

from __future__ import annotations

import json
import pickle

import pytest

from app.tasks import dead_letters as dead
from tests.fixtures.cli import agentq
from tests.fixtures.envelopes import valid_message
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

QUEUE = "agent.research"
# Long: a valid run that waited for a redelivery would time the test out instead.
SLOW_REDELIVERY = {"AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "600"}


def malformed(i: int) -> bytes:
    """The ``i``-th of a few kinds of message that are no agentq message."""
    message = json.loads(valid_message(QUEUE))
    kind = i % 6
    if kind == 0:
        return b"not json at all"
    if kind == 1:
        return b'{"properties": {"delivery_tag": 7}}'  # no tag the fetch could record
    if kind == 2:
        message["content-type"] = "application/x-python-serialize"
        message["body"] = pickle.dumps({"i": i}).hex()
    elif kind == 3:
        message["headers"]["task"] = "os.system"
    elif kind == 4:
        message["body"], message["properties"]["body_encoding"] = "!!not base64", "base64"
    else:
        return json.dumps(message).encode()[: 40 + i]  # cut short
    return json.dumps(message).encode()


def test_fifty_malformed_among_fifty_valid_on_two_workers(
    start_worker, celery_app, settings, redis_client
) -> None:
    workers = [start_worker(["research"], env=SLOW_REDELIVERY) for _ in range(2)]
    valid = [valid_message(QUEUE, base64_body=bool(i % 2)) for i in range(50)]
    bad = [malformed(i) for i in range(50)]
    interleaved = [raw for pair in zip(valid, bad, strict=True) for raw in pair]
    for start in range(0, 100, 10):  # in a few pushes, so that both workers fetch some
        redis_client.lpush(QUEUE, *interleaved[start : start + 10])

    for raw in valid:  # all of them, long before any visibility timeout
        run_id = json.loads(raw)["headers"]["id"]
        assert celery_app.AsyncResult(run_id).get(timeout=90).startswith("Answer: FUZZ")
    wait_for(lambda: dead.count(redis_client) == 50, 30, "50 quarantined messages")
    assert redis_client.llen(QUEUE) == 0 and redis_client.hlen("unacked") == 0
    assert all(w.proc is not None and w.proc.poll() is None for w in workers)  # both up

    listed = agentq(settings, "dlq", "list", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    assert "50 dead letter(s) in all" in listed.stdout
    assert listed.stdout.count("quarantined") == 50
    letters = dead.list_letters(redis_client, 100)
    assert all(letter.quarantined for letter in letters)
    assert {letter.worker for letter in letters} <= {w.node for w in workers}
    assert {letter.reason for letter in letters} == {
        "not_json", "no_delivery_tag", "content_type", "unknown_task", "body_encoding",
    }  # fmt: skip

    pickled = next(letter for letter in letters if letter.reason == "content_type")
    shown = agentq(settings, "dlq", "show", pickled.run_id)
    assert shown.returncode == 0 and "application/x-python-serialize" in shown.stdout
    assert shown.stdout.isascii() and "\x1b" not in shown.stdout

    refused = agentq(settings, "dlq", "replay", pickled.run_id)
    assert refused.returncode == 2 and "nothing to replay" in refused.stdout
    assert dead.count(redis_client) == 50  # refused, still there

    purged = agentq(settings, "dlq", "purge", "--all", "--yes")
    assert purged.returncode == 0 and "purged 50" in purged.stdout
    assert dead.count(redis_client) == 0
