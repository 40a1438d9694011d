"""What the fetch accepts off a queue: the check of ``envelope.schema.json``, by hand.

Everything the fetch takes is checked here before kombu or Celery sees it; what fails goes
to the quarantine (the dead letters) with the reason, never to a task and never out of the
worker as an exception. The schema file is the definition; this module is its fast form
(a full ``jsonschema`` validation per message would cost the hot path several times more),
and ``tests/unit/celery_ext/test_intake.py`` holds the two in agreement.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from importlib import resources
from typing import Any

from kombu.utils.json import object_hook as kombu_object_hook

from app.celery_ext.envelope import CONTENT_TYPE, compact_json


class QuarantineReason(enum.StrEnum):
    """Why a message was quarantined (stored with it, and the ``reason`` label of its metric)."""

    NOT_JSON = "not_json"  # not UTF-8 JSON text (the fetch script or this check)
    NOT_AN_OBJECT = "not_an_object"  # JSON, but not an object (the fetch script)
    NO_DELIVERY_TAG = "no_delivery_tag"  # no string delivery_tag / delivery_info (the script)
    NOT_AN_ENVELOPE = "not_an_envelope"  # a field of the envelope missing or mistyped
    CONTENT_TYPE = "content_type"  # not application/json in utf-8 (pickle, yaml, msgpack ...)
    BODY_ENCODING = "body_encoding"  # the body does not decode (bad base64, not UTF-8 JSON)
    NOT_A_CALL = "not_a_call"  # the body is not [args, kwargs, embed]
    UNKNOWN_TASK = "unknown_task"  # a task name the worker does not know
    TOO_LARGE = "too_large"  # headers or body past their size limit


@dataclass(frozen=True, slots=True)
class Intake:
    """What one worker accepts: its app's task names (looked up at each check, so a task
    registered later counts) and the size limits."""

    tasks: Container[str]
    headers_max_chars: int
    body_max_chars: int


class _Reject(Exception):
    def __init__(self, reason: QuarantineReason) -> None:
        self.reason = reason


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
# A body as kombu decodes it: {"__type__": "datetime", "__value__": ...} made a datetime.
_BODY_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_hook=kombu_object_hook)
_BLANKS = " \t\n\r"  # JSON's whitespace


def parse(raw: bytes, decoder: json.JSONDecoder = _DECODER) -> Any:
    """``raw`` as JSON (strict: UTF-8, no NaN/Infinity); ValueError when it is not."""
    text = raw.decode("utf-8")
    # The scanner straight away: decode() adds two regex matches, a third of the time.
    try:
        value, end = decoder.scan_once(text, 0)  # type: ignore[attr-defined]  # made by __init__
    except StopIteration:  # leading blanks, or not JSON: decode() says which
        return decoder.decode(text)
    if end != len(text) and text[end:].strip(_BLANKS):
        raise ValueError(f"extra data at character {end}")
    return value


SCHEMA: dict[str, Any] = json.loads(
    resources.files(__package__).joinpath("envelope.schema.json").read_text(encoding="utf-8")
)
"""The envelope schema (``envelope.schema.json``)."""
_TIME = re.compile(SCHEMA["$defs"]["optional_time"]["pattern"])  # searched, as jsonschema does


def _opt_time(value: Any) -> bool:
    return value is None or (type(value) is str and _TIME.search(value) is not None)


def _is_int(value: Any) -> bool:
    # JSON Schema's integer: 2 and 2.0, not true.
    return (type(value) is int) or (type(value) is float and value.is_integer())


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _opt_str(value: Any) -> bool:
    return value is None or type(value) is str


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _timelimit(value: Any) -> bool:
    return (
        type(value) is list and len(value) == 2 and all(v is None or _is_number(v) for v in value)
    )


def _stamped(value: Any) -> bool:
    return value is None or (type(value) is list and all(type(v) is str for v in value))


def _optional(kind: str) -> Callable[[Any], bool]:
    return lambda value: value is None or type(value) is {"list": list, "dict": dict}[kind]


# The headers' typed fields (envelope.schema.json, $defs/headers): the many that are a string
# or null tested inline (a call each would cost more than the rest of the check), then the rest.
_OPTIONAL_STRINGS = (
    "shadow", "group", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin",
)  # fmt: skip
_HEADER_TYPES: dict[str, Callable[[Any], bool]] = {
    "lang": lambda v: type(v) is str,
    "eta": _opt_time,
    "expires": _opt_time,
    "group_index": lambda v: v is None or _is_int(v),
    "retries": _count,
    "timelimit": _timelimit,
    "ignore_result": lambda v: v is None or type(v) is bool,  # send_task leaves it None
    "replaced_task_nesting": _count,
    "stamped_headers": _stamped,
    "stamps": lambda v: type(v) is dict,
    "agentq_enqueued_at": _is_number,
    "agentq_new_run": lambda v: type(v) is bool,
    "traceparent": lambda v: type(v) is str,
    "tracestate": lambda v: type(v) is str,
}
_PROPERTY_TYPES: dict[str, Callable[[Any], bool]] = {
    "correlation_id": lambda v: type(v) is str,
    "reply_to": lambda v: type(v) is str,
    "delivery_mode": _is_int,
    "priority": lambda v: _is_int(v) and 0 <= v <= 255,
}
_EMBED_TYPES: dict[str, Callable[[Any], bool]] = {
    "callbacks": _optional("list"),
    "errbacks": _optional("list"),
    "chain": _optional("list"),
    "chord": _optional("dict"),
}


def _typed(fields: dict[str, Any], types: dict[str, Callable[[Any], bool]]) -> bool:
    # A loop, not all() over a generator: a quarter less time on every message.
    for name, test in types.items():  # noqa: SIM110 (see above)
        if name in fields and not test(fields[name]):
            return False
    return True


def check(message: Any, intake: Intake, size: int) -> QuarantineReason | None:
    """Why ``message`` (a parsed envelope, ``size`` characters of text) must be quarantined;
    None when it is accepted."""
    return accept(message, intake, size)[0]


def accept(message: Any, intake: Intake, size: int) -> tuple[QuarantineReason | None, Any]:
    """:func:`check`, and an accepted message's body as kombu decodes it (``[args, kwargs,
    embed]``; None when rejected): delivered with it, the body is not decoded twice."""
    try:
        return None, _check(message, intake, size)
    except _Reject as rejected:
        return rejected.reason, None
    except RecursionError:  # headers nested too deep to encode again
        return QuarantineReason.TOO_LARGE, None


def _check(message: Any, intake: Intake, size: int) -> Any:
    if type(message) is not dict:
        raise _Reject(QuarantineReason.NOT_AN_OBJECT)
    headers, props, body = message.get("headers"), message.get("properties"), message.get("body")
    if type(headers) is not dict or type(props) is not dict or type(body) is not str:
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if "content-type" not in message or "content-encoding" not in message:
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if message["content-type"] != CONTENT_TYPE or message["content-encoding"] != "utf-8":
        raise _Reject(QuarantineReason.CONTENT_TYPE)
    task, task_id, tag, info = (
        headers.get("task"), headers.get("id"), props.get("delivery_tag"),
        props.get("delivery_info"),
    )  # fmt: skip
    if type(task) is not str or type(task_id) is not str or not task_id:
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if type(tag) is not str or not tag or type(info) is not dict:
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if type(info.get("exchange")) is not str or type(info.get("routing_key")) is not str:
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    get = headers.get
    for name in _OPTIONAL_STRINGS:
        value = get(name)
        if value is not None and type(value) is not str:
            raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if not _typed(headers, _HEADER_TYPES) or not _typed(props, _PROPERTY_TYPES):
        raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)
    if len(body) > intake.body_max_chars:
        raise _Reject(QuarantineReason.TOO_LARGE)
    # Re-encoded, a character of the message's text takes at most 6 (\\u00e9; 1e15 takes
    # 18 for 4): a message 8 times under the limit need not have its headers encoded.
    if size * 8 > intake.headers_max_chars and (
        len(compact_json(headers)) > intake.headers_max_chars
    ):
        raise _Reject(QuarantineReason.TOO_LARGE)
    if task not in intake.tasks:
        raise _Reject(QuarantineReason.UNKNOWN_TASK)
    call = _decoded_body(body, props)
    if not (
        type(call) is list
        and len(call) == 3
        and type(call[0]) is list
        and type(call[1]) is dict
        and type(call[2]) is dict
        and _typed(call[2], _EMBED_TYPES)
    ):
        raise _Reject(QuarantineReason.NOT_A_CALL)
    return call


def _decoded_body(body: str, props: dict[str, Any]) -> Any:
    """The body's value as kombu decodes it (its typed values, datetimes and UUIDs, made)."""
    encoding = props.get("body_encoding", _ABSENT)
    try:
        if encoding is _ABSENT:
            return parse(body.encode("utf-8"), _BODY_DECODER)
        if encoding == "base64":
            return parse(base64.b64decode(body, validate=True), _BODY_DECODER)
    except (ValueError, binascii.Error, RecursionError):  # a kombu type it does not know too
        raise _Reject(QuarantineReason.BODY_ENCODING) from None
    raise _Reject(QuarantineReason.NOT_AN_ENVELOPE)  # an encoding kombu would not undo


_ABSENT = object()


QUARANTINE_KEEP_DEFAULT = 4096
"""Bytes of a quarantined message kept when no worker set says otherwise."""


def escaped(raw: bytes) -> str:
    """``raw`` as ASCII text: bytes outside printable ASCII, and the backslash, as ``\\xHH``
    (what ``lua/take.lua`` writes too): valid JSON, safe to print on a terminal."""
    return "".join(chr(b) if 32 <= b <= 126 and b != 92 else f"\\x{b:02x}" for b in raw)


def unescaped(text: str) -> bytes:
    """The bytes :func:`escaped` wrote as ``text``."""
    return text.encode("ascii").decode("unicode_escape").encode("latin-1")


def quarantine_entry(
    entry_id: str, raw: bytes, reason: str, queue: str, worker: str, now: float, keep: int
) -> str:
    """The dead-letter JSON of a quarantined message (the fields of
    ``app.tasks.dead_letters.DeadLetter``; ``lua/take.lua`` writes the same)."""
    return compact_json(
        {
            "run_id": entry_id, "agent": "", "step": 0, "kind": "quarantined",
            "reason": reason, "retries": 0, "kwargs": {}, "task_id": "", "failed_at": now,
            "traceback": None, "raw": escaped(raw[:keep]), "raw_length": len(raw),
            "queue": queue, "worker": worker,
        }
    )  # fmt: skip
