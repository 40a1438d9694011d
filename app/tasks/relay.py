"""Token relay through Redis Streams: workers append a streamed run's tokens, producers read.

One stream per run (``agentq:stream:<tenant>:<run id>``). Each entry is one event:

- ``attempt``: a step's model call begins; a second ``attempt`` of the same step means the
  first was cut off (worker lost, model server gone) and its tokens are void;
- ``token``: a piece of the model's reply, in order (pieces concatenate);
- ``step``: the step is committed (``data``: its kind and tool);
- ``end``: the run is over (``data``: ``status`` and ``answer`` or ``error``);
- ``waiting``: the step parked the run (``data``: ``kind``, a signal's ``name``, the sub-agent
  runs' ids as ``children``);
- ``child``: a sub-agent run's step was committed or it ended (``data``: its ``run_id``,
  ``agent``, and ``kind`` and ``tools``, or ``status``), in its root run's stream.

Writes never block the worker on a reader: ``XADD`` returns at once, the stream is capped
(``MAXLEN ~``) and expires ``ttl_s`` after its last entry, so a slow or absent reader costs
bounded memory and nothing else. A failed write is logged and the step goes on: the step's
durable record is in SQL, the stream is a live view. Readers start from the stream's
beginning, so one that connects late misses nothing that has not expired.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.config import StreamSettings
from app.constants import stream_key
from app.memory.records import RunStatus, StepKind

log = logging.getLogger(__name__)

ATTEMPT, TOKEN, STEP, END = "attempt", "token", "step", "end"
WAITING, CHILD = "waiting", "child"


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One entry of a run's stream."""

    kind: str
    step: int
    text: str = ""
    data: Any = None
    ts_ns: int = 0  # wall clock (ns) when the worker wrote it, for relay-latency measurement
    id: str = ""


def encode(kind: str, step: int, text: str = "", data: Any = None) -> dict[str, str]:
    """The fields of one stream entry."""
    fields = {"k": kind, "s": str(step), "ts": str(time.time_ns())}
    if text:
        fields["t"] = text
    if data is not None:
        fields["d"] = json.dumps(data, separators=(",", ":"))
    return fields


def decode(entry_id: bytes | str, fields: dict[Any, Any]) -> StreamEvent:
    """A stream entry as a :class:`StreamEvent`."""

    def get(name: str) -> str:
        value = fields.get(name.encode(), fields.get(name))
        return value.decode() if isinstance(value, bytes) else (value or "")

    raw = get("d")
    return StreamEvent(
        kind=get("k"),
        step=int(get("s") or 0),
        text=get("t"),
        data=json.loads(raw) if raw else None,
        ts_ns=int(get("ts") or 0),
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
    )


class TokenRelay:
    """The worker's side: append events to a run's stream without ever waiting on a reader."""

    def __init__(self, client: Any, settings: StreamSettings) -> None:
        self.redis = client
        self.settings = settings

    def _add(self, tenant: str, run_id: str, fields: dict[str, str]) -> None:
        key = stream_key(tenant, run_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=self.settings.max_len, approximate=True)
            pipe.expire(key, self.settings.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("token relay for run %s: write failed, stream incomplete: %s", run_id, exc)

    def attempt(self, tenant: str, run_id: str, step: int) -> None:
        """A step's model call begins."""
        self._add(tenant, run_id, encode(ATTEMPT, step))

    def token(self, tenant: str, run_id: str, step: int, piece: str) -> None:
        """A piece of the reply, as it left the model server."""
        self._add(tenant, run_id, encode(TOKEN, step, piece))

    def step(
        self, tenant: str, run_id: str, step: int, kind: StepKind, tools: Sequence[str] = ()
    ) -> None:
        """The step is committed; ``tools``: the tools it called, in order (``tool``: the
        first, for readers of one call per step)."""
        data = {"kind": kind, "tool": tools[0] if tools else None, "tools": list(tools)}
        self._add(tenant, run_id, encode(STEP, step, data=data))

    def end(
        self,
        tenant: str,
        run_id: str,
        status: RunStatus,
        answer: Any = None,
        error: str | None = None,
    ) -> None:
        """The run is over: ``status`` is succeeded or failed."""
        data: dict[str, Any] = {"status": status}
        if error is None:
            data["answer"] = answer
        else:
            data["error"] = error
        self._add(tenant, run_id, encode(END, -1, data=data))

    def waiting(self, tenant: str, run_id: str, step: int, data: dict[str, Any]) -> None:
        """The step parked the run (on what: ``data``)."""
        self._add(tenant, run_id, encode(WAITING, step, data=data))

    def child(self, tenant: str, root_id: str, step: int, data: dict[str, Any]) -> None:
        """A sub-agent run's step or end, shown in its root run's stream."""
        self._add(tenant, root_id, encode(CHILD, step, data=data))
