"""``agentq.run_agent`` messages built directly: Celery's protocol 2 in kombu's Redis envelope.

``submit_many`` enqueues thousands of runs at once; through ``apply_async`` each costs about
0.25 ms of CPU (option merging, routing, entity declaration, kombu's publish machinery), ten
times what building the same message costs. The envelope is what kombu's Redis transport
LPUSHes: the body (``[args, kwargs, embed]``) as JSON text, headers and properties as
Celery writes them, except that the body is not base64-encoded (kombu decodes per message,
by its ``body_encoding``; without one the text is taken as is: a quarter smaller, no
encoding either way) and ``kwargsrepr`` is in the headers only (``apply_async`` also copies
it into the properties).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from functools import lru_cache
from json.encoder import encode_basestring_ascii as _string
from typing import Any

from celery import Celery
from celery.utils.nodenames import anon_nodename

from app.constants import TASK_RUN_AGENT
from app.ops import tracing
from app.ops.masking import task_kwargsrepr

CONTENT_TYPE = "application/json"

ENQUEUED_AT = "agentq_enqueued_at"
"""Message header: Unix time the step was enqueued (for the queue-wait metric)."""

NEW_RUN = "agentq_new_run"
"""Message header of a run's first message as submit()/submit_many() publish it."""
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
compact_json = json.JSONEncoder(separators=(",", ":")).encode
"""JSON text without spaces, ASCII only (its length is its size in bytes)."""
_EMBED_TAIL = f",{compact_json(_EMBED)}]"  # the body after its kwargs
# What differs between a queue's messages, in the order the envelope's text holds them.
_ORDER = ("body", "id", "root", "parent", "kwargsrepr", "extra", "id", "tag")
_SLOTS = tuple(dict.fromkeys(_ORDER))
Envelope = tuple[str, str, str, str, str, str, str, str, str]
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
_HEX3 = [f"{n:03x}" for n in range(0x1000)]  # a UUIDv7's counter, as text


def _template() -> str:
    """The envelope as a %-format string: every variable field a ``%(name)s`` slot that takes
    JSON text. Formatting it costs a third of encoding the whole envelope each time."""
    slots = (
        "body", "id", "shadow", "root", "parent", "kwargsrepr", "origin", "ignore_result",
        "reply_to", "queue", "tag",
    )  # fmt: skip
    envelope = {
        "body": "body",
        "content-encoding": "utf-8",
        "content-type": CONTENT_TYPE,
        "headers": {
            "lang": "py",
            "task": TASK_RUN_AGENT,
            "id": "id",
            "shadow": "shadow",
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": "root",
            "parent_id": "parent",
            "argsrepr": "()",
            "kwargsrepr": "kwargsrepr",
            "origin": "origin",
            "ignore_result": "ignore_result",
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": "id",
            "reply_to": "reply_to",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "queue"},
            "priority": 0,
            "delivery_tag": "tag",
        },
    }
    text = (
        compact_json(envelope).replace("%", "%%").replace('"stamps":{}}', '"stamps":{}%(extra)s}')
    )
    for slot in slots:
        text = text.replace(f':"{slot}"', f":%({slot})s")
    return text


_TEMPLATE = _template()


@lru_cache(maxsize=1024)
def envelope(
    queue: str,
    reply_to: str,
    origin: str,
    ignore_result: bool = True,
    shadow: str | None = None,
) -> Envelope:
    """The envelope of ``queue``'s messages with the fields they share filled in: the text
    around the slots :func:`fill` fills. ``shadow``: the name monitors show (:func:`shadow_of`)."""
    keep = {slot: f"\0{slot}\0" for slot in _SLOTS}
    text = _TEMPLATE % {
        **keep,
        "shadow": compact_json(shadow),
        "origin": compact_json(origin),
        "ignore_result": "true" if ignore_result else "false",
        "reply_to": compact_json(reply_to),
        "queue": compact_json(queue),
    }
    pieces = re.split("\0(\\w+)\0", text)
    assert tuple(pieces[1::2]) == _ORDER, pieces[1::2]
    return tuple(pieces[0::2])  # type: ignore[return-value]


def fill(
    envelope: Envelope,
    task_id: str,
    kwargs_json: str,
    kwargsrepr: str,
    headers_json: str,
    tag: str,
    root_id: str | None = None,
    parent_id: str | None = None,
) -> str:
    """One message from an :func:`envelope`: the task's id, its kwargs as JSON text, their
    ``kwargsrepr``, its extra headers as a JSON object's text, and its delivery tag;
    ``root_id`` (the run id; by default the task's id) and ``parent_id`` (the task that sent
    it) link a run's steps in Flower."""
    (head, after_body, after_id, after_root, after_parent, after_repr, after_extra,
     after_corr, tail) = envelope  # fmt: skip
    id_ = _string(task_id)
    return "".join(
        (
            head,
            _string(f"[[],{kwargs_json}{_EMBED_TAIL}"),
            after_body,
            id_,
            after_id,
            _string(root_id) if root_id else id_,
            after_root,
            "null" if parent_id is None else _string(parent_id),
            after_parent,
            _string(kwargsrepr),
            after_repr,
            f",{headers_json[1:-1]}" if len(headers_json) > 2 else "",
            after_extra,
            id_,
            after_corr,
            _string(tag),
            tail,
        )
    )


def run_message(
    task_id: str,
    kwargs: Mapping[str, Any],
    queue: str,
    headers: Mapping[str, Any],
    *,
    reply_to: str,
    origin: str | None = None,
    ignore_result: bool = True,
    tag: str | None = None,
    root_id: str | None = None,
    parent_id: str | None = None,
) -> str:
    """The JSON text kombu's Redis transport keeps in list ``queue`` for this message.

    ``tag`` is its delivery tag, unique among messages (a fresh UUID by default); the
    unacknowledged message is kept under it while a worker holds it. ``root_id`` and
    ``parent_id``: as :func:`fill` takes them.
    """
    return fill(
        envelope(queue, reply_to, origin or anon_nodename(), ignore_result, shadow_of(kwargs)),
        task_id,
        compact_json(dict(kwargs)),
        task_kwargsrepr(kwargs),
        compact_json(dict(headers)),
        tag or new_id(),
        root_id,
        parent_id,
    )


def shadow_of(kwargs: Mapping[str, Any] | None) -> str | None:
    """The name Flower and Celery's log lines show for a step message (Celery's ``shadow``
    header): its agent type; None (the task's own name) without one."""
    agent = kwargs.get("agent") if kwargs else None
    return agent if isinstance(agent, str) and agent else None


def reply_to_of(app: Celery) -> str:
    """The ``reply_to`` property of messages ``app`` publishes from this thread (as Celery
    writes it)."""
    return str(app.thread_oid)


def process_origin() -> str:
    """The ``origin`` header of messages this process publishes (Celery's anon node name)."""
    return str(anon_nodename())


def message_headers(*, new_run: bool = False) -> dict[str, Any]:
    """Headers of a step message: when it was enqueued, and the trace it belongs to;
    ``new_run`` marks a run's first message as a producer submits it (:data:`NEW_RUN`)."""
    headers = tracing.inject({ENQUEUED_AT: time.time()})
    if new_run:
        headers[NEW_RUN] = True
    return headers


def step_task_id(run_id: str, step: int) -> str:
    """Task id of a run's later step messages (step 0's is the run id)."""
    return f"{run_id}:{step}"


def new_id() -> str:
    """A fresh run id: a version 7 UUID's text (RFC 9562: Unix milliseconds, then random
    bits), so the id tells when it was made (:func:`app.celery_ext.queued.time_of`)."""
    t, h = f"{time.time_ns() // 1_000_000:012x}", os.urandom(10).hex()
    return f"{t[:8]}-{t[8:]}-7{h[:3]}-{_VARIANT[h[3]]}{h[4:7]}-{h[7:19]}"


def new_ids(chunk: int = 1024) -> Iterator[str]:
    """Endless fresh ids as :func:`new_id` makes them, in increasing order: within one
    millisecond the 12 bits after the version count up from a random start (RFC 9562's
    method 1; past 4095 the next millisecond is borrowed). The random bits are drawn
    ``chunk`` ids at a time (one system call per chunk, not per id)."""
    last, seq, head = -1, 0, ""
    while True:
        pool = os.urandom(9 * chunk).hex()  # 18 digits an id: a counter's start, 16 random
        for at in range(0, 18 * chunk, 18):
            ms = time.time_ns() // 1_000_000
            if ms > last:
                last, seq = ms, int(pool[at : at + 2], 16)  # leaves 3840 ids for this ms
                t = f"{last:012x}"
                head = f"{t[:8]}-{t[8:]}-7"
            elif seq < 0xFFF:
                seq += 1
            else:
                last, seq = last + 1, 0
                t = f"{last:012x}"
                head = f"{t[:8]}-{t[8:]}-7"
            rand = pool[at + 2 : at + 18]
            yield f"{head}{_HEX3[seq]}-{_VARIANT[rand[0]]}{rand[1:4]}-{rand[4:]}"
