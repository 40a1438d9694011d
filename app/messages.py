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
import time
import uuid
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from celery.utils.nodenames import anon_nodename

from app import tracing
from app.constants import TASK_RUN_AGENT
from app.masking import task_kwargsrepr

CONTENT_TYPE = "application/json"

ENQUEUED_AT = "agentq_enqueued_at"
"""Message header: Unix time the step was enqueued (for the queue-wait metric)."""

NEW_RUN = "agentq_new_run"
"""Message header of a run's first message as submit()/submit_many() publish it."""
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_compact = json.JSONEncoder(separators=(",", ":")).encode
# Queue names, origin and reply-to are the same for every message of a batch.
_constant = lru_cache(maxsize=1024)(_compact)


def _template() -> str:
    """The envelope as a %-format string: every variable field a ``%(name)s`` slot that takes
    JSON text. Formatting it costs a third of encoding the whole envelope each time."""
    slots = ("body", "id", "kwargsrepr", "origin", "ignore_result", "reply_to", "queue", "tag")
    envelope = {
        "body": "body",
        "content-encoding": "utf-8",
        "content-type": CONTENT_TYPE,
        "headers": {
            "lang": "py",
            "task": TASK_RUN_AGENT,
            "id": "id",
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": "id",
            "parent_id": None,
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
    text = _compact(envelope).replace("%", "%%").replace('"stamps":{}}', '"stamps":{}%(extra)s}')
    for slot in slots:
        text = text.replace(f':"{slot}"', f":%({slot})s")
    return text


_TEMPLATE = _template()


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
) -> str:
    """The JSON text kombu's Redis transport keeps in list ``queue`` for this message.

    ``tag`` is its delivery tag, unique among messages (a fresh UUID by default); the
    unacknowledged message is kept under it while a worker holds it.
    """
    extra = _compact(dict(headers))[1:-1]
    return _TEMPLATE % {
        "body": _compact(_compact([[], dict(kwargs), _EMBED])),
        "id": _compact(task_id),
        "kwargsrepr": _compact(task_kwargsrepr(kwargs)),
        "origin": _constant(origin or anon_nodename()),
        "ignore_result": "true" if ignore_result else "false",
        "reply_to": _constant(reply_to),
        "queue": _constant(queue),
        "tag": _compact(tag or str(uuid.uuid4())),
        "extra": "," + extra if extra else "",
    }


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
