"""The fetch quarantines what is no agentq message and delivers the rest of its batch at once."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import kombu.message
import pytest
from kombu import Consumer, Exchange, Queue
from kombu.utils import json as kombu_json

from app.celery_ext import transport
from app.celery_ext.app import create_celery
from app.celery_ext.intake import Intake, escaped, unescaped
from app.config import Settings
from app.constants import DEAD_LETTER_INDEX, DEAD_LETTERS, TASK_RUN_AGENT
from app.tasks import dead_letters as dead
from tests.fixtures.envelopes import valid_message

pytestmark = pytest.mark.integration

NAME = "agent.research"
QUEUE = Queue(NAME, Exchange(NAME, type="direct"), NAME)


@pytest.fixture
def checked():
    """This process's fetch checks envelopes as a worker's does (then no longer)."""
    rules = transport.IntakeRules(Intake({TASK_RUN_AGENT}, 64 * 1024, 1024 * 1024), "w@t", 16)
    transport.check_envelopes(rules)
    yield rules
    transport.check_envelopes(transport.IntakeRules())


def test_malformed_messages_are_quarantined_once_each_and_the_batch_is_delivered(
    redis_url, redis_client, checked
) -> None:
    good = [valid_message(NAME), valid_message(NAME, base64_body=True)]
    unknown = json.loads(valid_message(NAME))
    unknown["headers"]["task"] = "os.system"
    bad = [
        b"not json at all",  # the script: not JSON
        b"not json at all",  # the same bytes again: an entry of its own
        b'{"properties": {}}',  # the script: no delivery tag
        json.dumps(unknown).encode(),  # recorded as unacked, then the check: unknown task
        b"\x1b[31m\xff\xfe",  # terminal escapes, not UTF-8
    ]
    for raw in [bad[0], good[0], bad[1], bad[2], bad[3], good[1], bad[4]]:
        redis_client.lpush(NAME, raw)

    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    got = []
    with app.connection_for_write() as conn:
        channel = conn.channel()
        with Consumer(channel, [QUEUE], callbacks=[lambda _b, m: got.append(m)], accept=["json"]):
            conn.drain_events(timeout=5)  # one fetch: all seven taken at once
            assert [m.headers["id"] for m in got] == [
                json.loads(raw)["headers"]["id"] for raw in good
            ]
            assert redis_client.hlen("unacked") == redis_client.zcard("unacked_index") == 2
            for message in got:
                message.ack()
        channel.close()
    app.close()

    assert redis_client.llen(NAME) == 0 and redis_client.hlen("unacked") == 0
    letters = sorted(dead.list_letters(redis_client, 100), key=lambda letter: letter.run_id)
    assert len(letters) == redis_client.zcard(DEAD_LETTER_INDEX) == len(bad)
    assert all(letter.quarantined and letter.worker == "w@t" for letter in letters)
    assert all(letter.queue == NAME for letter in letters)
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == sorted(
        ["not_json", "not_json", "no_delivery_tag", "unknown_task", "not_json"]
    )
    assert sorted(letter.raw_length for letter in letters) == sorted(len(raw) for raw in bad)
    for letter in letters:  # valid JSON whatever arrived; the first 16 bytes, escaped
        assert letter.raw is not None and letter.raw.isprintable()
        assert json.loads(redis_client.hget(DEAD_LETTERS, letter.run_id))["kind"] == "quarantined"
    assert {"\\x1b[31m\\xff\\xfe", "not json at all"} <= {letter.raw for letter in letters}


def test_without_a_worker_check_only_what_cannot_be_recorded_is_quarantined(
    redis_url, redis_client
) -> None:
    every_byte = b"\x00garbage" + bytes(range(256))
    redis_client.lpush(NAME, every_byte, valid_message(NAME))
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    got = []
    with app.connection_for_write() as conn:
        channel = conn.channel()
        with Consumer(channel, [QUEUE], callbacks=[lambda _b, m: got.append(m)], accept=["json"]):
            conn.drain_events(timeout=5)
            assert len(got) == 1
            got[0].ack()
        channel.close()
    app.close()
    (letter,) = dead.list_letters(redis_client, 10)
    # The script escapes as intake.escaped does, every byte of it.
    assert (letter.reason, letter.raw) == ("not_json", escaped(every_byte))
    assert unescaped(letter.raw) == every_byte


def test_a_checked_message_is_delivered_with_the_body_the_check_decoded(
    redis_url, redis_client, checked, monkeypatch
) -> None:
    # The check decodes the body; kombu must not decode it again (Celery asks for it at once),
    # and its typed values (a datetime, as kombu's JSON encodes one) come out as kombu makes them.
    message = json.loads(valid_message(NAME, base64_body=True))
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = [[], {"agent": "research", "input": "hi", "at": at}, {}]
    message["body"] = base64.b64encode(kombu_json.dumps(body).encode()).decode()
    redis_client.lpush(NAME, json.dumps(message))
    monkeypatch.setattr(kombu.message, "loads", _no_second_decode)

    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    got = []
    with app.connection_for_write() as conn:
        channel = conn.channel()
        with Consumer(channel, [QUEUE], callbacks=[lambda b, m: got.append((b, m))]):
            conn.drain_events(timeout=5)
            [(decoded, delivered)] = got
            assert decoded == delivered.payload == body
            assert decoded[1]["at"] == at
            delivered.ack()
        channel.close()
    app.close()


def _no_second_decode(*_args: object, **_kwargs: object) -> object:
    raise AssertionError("kombu decoded a body the intake check had decoded")
