"""Token relay through Redis Streams: workers append a streamed run's tokens, producers read.

One stream per run (``agentq:stream:<run id>``). Each entry is one event:

- ``attempt``: a step's model call begins; a second ``attempt`` of the same step means the
  first was cut off (worker lost, model server gone) and its tokens are void;
- ``token``: a piece of the model's reply, in order (pieces concatenate);
- ``step``: the step is committed (``data``: its kind and tool);
- ``end``: the run is over (``data``: ``status`` and ``answer`` or ``error``).

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
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery.result import AsyncResult

from app.config import Settings, StreamSettings
from app.constants import stream_key
from app.errors import StreamTimeoutError
from app.redis_client import async_redis_client, redis_client

log = logging.getLogger(__name__)

ATTEMPT, TOKEN, STEP, END = "attempt", "token", "step", "end"


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

    def _add(self, run_id: str, fields: dict[str, str]) -> None:
        key = stream_key(run_id)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=self.settings.max_len, approximate=True)
            pipe.expire(key, self.settings.ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("token relay for run %s: write failed, stream incomplete: %s", run_id, exc)

    def attempt(self, run_id: str, step: int) -> None:
        """A step's model call begins."""
        self._add(run_id, encode(ATTEMPT, step))

    def token(self, run_id: str, step: int, piece: str) -> None:
        """A piece of the reply, as it left the model server."""
        self._add(run_id, encode(TOKEN, step, piece))

    def step(self, run_id: str, step: int, kind: str, tool: str | None = None) -> None:
        """The step is committed."""
        self._add(run_id, encode(STEP, step, data={"kind": kind, "tool": tool}))

    def end(self, run_id: str, status: str, answer: Any = None, error: str | None = None) -> None:
        """The run is over: ``status`` is succeeded or failed."""
        data = {"status": status, "answer": answer} if error is None else {"status": status}
        if error is not None:
            data["error"] = error
        self._add(run_id, encode(END, -1, data=data))


def _deadline_ms(deadline: float, block_ms: int, run_id: str, timeout_s: float) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise StreamTimeoutError(f"run {run_id}: stream did not end within {timeout_s} s")
    return max(1, min(block_ms, int(left * 1000)))


def _events(response: Any) -> list[StreamEvent]:
    """The events of one XREAD reply (None when it timed out)."""
    return [decode(i, fields) for _key, entries in response or [] for i, fields in entries]


def read_events(
    client: Any, run_id: str, *, timeout_s: float = 300.0, block_ms: int = 1000
) -> Iterator[StreamEvent]:
    """Every event of the run's stream from its start, as written, up to and including ``end``.

    Blocks until events come; raises StreamTimeoutError when the run has not ended within
    ``timeout_s``.
    """
    key, last = stream_key(run_id), "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        block = _deadline_ms(deadline, block_ms, run_id, timeout_s)
        for event in _events(client.xread({key: last}, count=1024, block=block)):
            last = event.id
            yield event
            if event.kind == END:
                return


async def aread_events(
    client: Any, run_id: str, *, timeout_s: float = 300.0, block_ms: int = 1000
) -> AsyncIterator[StreamEvent]:
    """:func:`read_events` for asyncio, on a ``redis.asyncio`` client."""
    key, last = stream_key(run_id), "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        block = _deadline_ms(deadline, block_ms, run_id, timeout_s)
        for event in _events(await client.xread({key: last}, count=1024, block=block)):
            last = event.id
            yield event
            if event.kind == END:
                return


def _settings(result: AsyncResult) -> Settings:
    return result.app.agentq_settings  # type: ignore[no-any-return]


def _client(result: AsyncResult) -> Any:
    app = result.app
    client = getattr(app, "agentq_stream_redis", None)
    if client is None:
        client = redis_client(_settings(result))
        app.agentq_stream_redis = client
    return client


class RunResult(AsyncResult):  # type: ignore[misc]
    """A run's ``AsyncResult`` that can also follow its tokens (runs submitted with stream=True).

    ``for token in result.stream(): print(token, end="")`` prints the model's reply as it is
    generated; ``result.get()`` still gives the final answer.
    """

    def events(self, timeout: float = 300.0) -> Iterator[StreamEvent]:
        """Every event of the run's stream (see the module docstring) until it ends."""
        block_ms = _settings(self).stream.read_block_ms
        return read_events(_client(self), self.id, timeout_s=timeout, block_ms=block_ms)

    def stream(self, timeout: float = 300.0) -> Iterator[str]:
        """The model's tokens of every step, in order, as they are generated."""
        return (e.text for e in self.events(timeout) if e.kind == TOKEN)

    async def aevents(self, timeout: float = 300.0) -> AsyncIterator[StreamEvent]:
        """:meth:`events` for asyncio."""
        settings = _settings(self)
        client = async_redis_client(settings)
        try:
            async for event in aread_events(
                client, self.id, timeout_s=timeout, block_ms=settings.stream.read_block_ms
            ):
                yield event
        finally:
            await client.aclose()

    async def astream(self, timeout: float = 300.0) -> AsyncIterator[str]:
        """:meth:`stream` for asyncio: ``async for token in result.astream(): ...``."""
        async for event in self.aevents(timeout):
            if event.kind == TOKEN:
                yield event.text
