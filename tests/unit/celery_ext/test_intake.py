"""The fetch's check agrees with the envelope schema: what it accepts, what it rejects, why."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings

from app.celery_ext.intake import (
    Intake,
    QuarantineReason,
    check,
    escaped,
    parse,
    quarantine_entry,
    unescaped,
)
from app.constants import TASK_RUN_AGENT
from app.tasks.dead_letters import DeadLetter, DeadLetterKind
from tests.fixtures.envelopes import messages, schema_accepts, valid_message

TASKS = {TASK_RUN_AGENT, "agentq.other"}
INTAKE = Intake(TASKS, headers_max_chars=64 * 1024, body_max_chars=1024 * 1024)
Q = QuarantineReason


def verdict(raw: bytes) -> QuarantineReason | None:
    try:
        message = parse(raw)
    except (ValueError, RecursionError):
        return Q.NOT_JSON
    return check(message, INTAKE, len(raw))


def agrees(raw: bytes) -> None:
    accepted = schema_accepts(raw, TASKS, INTAKE.headers_max_chars, INTAKE.body_max_chars)
    assert (verdict(raw) is None) == accepted, raw[:300]


@pytest.mark.parametrize("base64_body", [False, True])
def test_messages_as_agentq_and_celery_write_them_are_accepted(base64_body: bool) -> None:
    raw = valid_message("agent.research", base64_body)
    assert verdict(raw) is None
    agrees(raw)


def _edit(edit) -> bytes:
    message = json.loads(valid_message("agent.research"))
    edit(message)
    return json.dumps(message).encode()


def _set(*path, value):
    def edit(message):
        node = message
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


DEFECTS = {
    "not json": (b"not json at all", Q.NOT_JSON),
    "invalid utf-8": (b'{"a": "\xff"}', Q.NOT_JSON),
    "nan": (b'{"a": NaN}', Q.NOT_JSON),
    "an array": (b"[1, 2]", Q.NOT_AN_OBJECT),
    "no body": (_edit(_set("body", value=KeyError)), Q.NOT_AN_ENVELOPE),
    "body a number": (_edit(_set("body", value=3)), Q.NOT_AN_ENVELOPE),
    "headers a list": (_edit(_set("headers", value=[])), Q.NOT_AN_ENVELOPE),
    "no properties": (_edit(_set("properties", value=KeyError)), Q.NOT_AN_ENVELOPE),
    "no content type": (_edit(_set("content-type", value=KeyError)), Q.NOT_AN_ENVELOPE),
    "no task": (_edit(_set("headers", "task", value=KeyError)), Q.NOT_AN_ENVELOPE),
    "empty id": (_edit(_set("headers", "id", value="")), Q.NOT_AN_ENVELOPE),
    "retries a string": (_edit(_set("headers", "retries", value="1")), Q.NOT_AN_ENVELOPE),
    "eta not a time": (_edit(_set("headers", "eta", value="soon")), Q.NOT_AN_ENVELOPE),
    "priority 256": (_edit(_set("properties", "priority", value=256)), Q.NOT_AN_ENVELOPE),
    "no routing key": (
        _edit(_set("properties", "delivery_info", "routing_key", value=KeyError)),
        Q.NOT_AN_ENVELOPE,
    ),
    "pickle": (
        _edit(_set("content-type", value="application/x-python-serialize")),
        Q.CONTENT_TYPE,
    ),
    "yaml": (_edit(_set("content-type", value="application/x-yaml")), Q.CONTENT_TYPE),
    "msgpack": (_edit(_set("content-type", value="application/x-msgpack")), Q.CONTENT_TYPE),
    "latin-1": (_edit(_set("content-encoding", value="latin-1")), Q.CONTENT_TYPE),
    "bad base64": (
        _edit(
            lambda m: m.update(
                body="!!notbase64", properties={**m["properties"], "body_encoding": "base64"}
            )
        ),
        Q.BODY_ENCODING,
    ),
    "body not json": (_edit(_set("body", value="[[], {")), Q.BODY_ENCODING),
    "other body encoding": (
        _edit(_set("properties", "body_encoding", value="rot13")),
        Q.NOT_AN_ENVELOPE,
    ),
    "unknown task": (_edit(_set("headers", "task", value="os.system")), Q.UNKNOWN_TASK),
    "body an object": (_edit(_set("body", value='{"args": []}')), Q.NOT_A_CALL),
    "body of two": (_edit(_set("body", value="[[], {}]")), Q.NOT_A_CALL),
    "kwargs a list": (_edit(_set("body", value="[[], [], {}]")), Q.NOT_A_CALL),
    "callbacks a string": (
        _edit(_set("body", value='[[], {}, {"callbacks": "x"}]')),
        Q.NOT_A_CALL,
    ),
    "body too large": (_edit(_set("body", value="A" * (1024 * 1024 + 1))), Q.TOO_LARGE),
    "headers too large": (_edit(_set("headers", "pad", value="A" * 64 * 1024)), Q.TOO_LARGE),
}


@pytest.mark.parametrize("name", DEFECTS)
def test_each_defect_is_rejected_with_its_reason(name: str) -> None:
    raw, reason = DEFECTS[name]
    assert verdict(raw) == reason
    agrees(raw)


def test_a_task_registered_on_the_app_is_accepted_by_name() -> None:
    raw = _edit(_set("headers", "task", value="agentq.other"))
    assert verdict(raw) is None
    agrees(raw)


@settings(
    max_examples=400, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
@given(messages("agent.research"))
def test_the_check_agrees_with_the_schema_on_generated_messages(raw: bytes) -> None:
    agrees(raw)


def test_a_quarantine_entry_reads_as_a_dead_letter_and_keeps_its_bytes_escaped() -> None:
    raw = b"\x1b[2J\\ caf\xc3\xa9 \x00" + b"x" * 100
    entry = quarantine_entry("quarantine-7", raw, Q.NOT_JSON, "agent.research", "w@h", 1.5, 16)
    letter = DeadLetter.from_json(entry)
    assert letter.kind == DeadLetterKind.QUARANTINED and letter.quarantined
    assert (letter.run_id, letter.reason, letter.queue, letter.worker) == (
        "quarantine-7", "not_json", "agent.research", "w@h",
    )  # fmt: skip
    assert letter.raw_length == len(raw) and letter.raw is not None
    assert letter.raw.isascii() and letter.raw.isprintable()  # nothing drives a terminal
    assert unescaped(letter.raw) == raw[:16]
    assert escaped(bytes(range(256))).isprintable()
    assert unescaped(escaped(bytes(range(256)))) == bytes(range(256))


def test_an_older_dead_letter_without_the_quarantine_fields_still_reads() -> None:
    old = {
        "run_id": "r", "agent": "a", "step": 1, "kind": "poison", "reason": "x", "retries": 0,
        "kwargs": {}, "task_id": "r:1", "failed_at": 1.0, "traceback": None,
    }  # fmt: skip
    letter = DeadLetter.from_json(json.dumps(old))
    assert letter.raw is None and not letter.quarantined


def test_a_celery_style_body_decodes_from_base64() -> None:
    message = json.loads(valid_message("agent.research", base64_body=True))
    assert json.loads(base64.b64decode(message["body"]))[1]["agent"] == "research"


@pytest.mark.parametrize("text", [b"{}", b" \t{}\r\n", b'{"a": [1, 2.5, "\\u00e9"]}  '])
def test_parse_reads_json_text_with_blanks_around_it(text: bytes) -> None:
    assert parse(text) == json.loads(text)


NOT_ONE_JSON_TEXT = [b"", b" ", b"{} x", b"{}{}", b"1 2", b"NaN", b"[Infinity]", b"\xff"]


@pytest.mark.parametrize("text", NOT_ONE_JSON_TEXT)
def test_parse_refuses_what_is_not_one_strict_json_text(text: bytes) -> None:
    with pytest.raises(ValueError):
        parse(text)
