"""What a producer holds for a run: its :class:`RunResult`, which also follows the run's tokens.

The stream's events are written by the worker's relay (:mod:`app.tasks.relay`, which documents
them); readers start from the stream's beginning, so one that connects late misses nothing
that has not expired.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from celery.result import AsyncResult

from app.celery_ext.context import context_of
from app.constants import DEFAULT_TENANT, stream_key
from app.errors import StreamTimeoutError
from app.ops.redis_clients import async_redis_client
from app.tasks.relay import END, TOKEN, StreamEvent, decode


def _deadline_ms(deadline: float, block_ms: int, run_id: str, timeout_s: float) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise StreamTimeoutError(f"run {run_id}: stream did not end within {timeout_s} s")
    return max(1, min(block_ms, int(left * 1000)))


def _events(response: Any) -> list[StreamEvent]:
    """The events of one XREAD reply (None when it timed out)."""
    return [decode(i, fields) for _key, entries in response or [] for i, fields in entries]


def read_events(
    client: Any,
    run_id: str,
    *,
    tenant: str = DEFAULT_TENANT,
    timeout_s: float = 300.0,
    block_ms: int = 1000,
) -> Iterator[StreamEvent]:
    """Every event of the run's stream from its start, as written, up to and including ``end``.

    Blocks until events come; raises StreamTimeoutError when the run has not ended within
    ``timeout_s``.
    """
    key, last = stream_key(tenant, run_id), "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        block = _deadline_ms(deadline, block_ms, run_id, timeout_s)
        for event in _events(client.xread({key: last}, count=1024, block=block)):
            last = event.id
            yield event
            if event.kind == END:
                return


async def aread_events(
    client: Any,
    run_id: str,
    *,
    tenant: str = DEFAULT_TENANT,
    timeout_s: float = 300.0,
    block_ms: int = 1000,
) -> AsyncIterator[StreamEvent]:
    """:func:`read_events` for asyncio, on a ``redis.asyncio`` client."""
    key, last = stream_key(tenant, run_id), "0-0"
    deadline = time.monotonic() + timeout_s
    while True:
        block = _deadline_ms(deadline, block_ms, run_id, timeout_s)
        for event in _events(await client.xread({key: last}, count=1024, block=block)):
            last = event.id
            yield event
            if event.kind == END:
                return


class RunResult(AsyncResult):  # type: ignore[misc]
    """A run's ``AsyncResult`` that can also follow its tokens (runs submitted with stream=True).

    ``for token in result.stream(): print(token, end="")`` prints the model's reply as it is
    generated; ``result.get()`` still gives the final answer. ``tenant``: whose run it is
    (``submit(tenant=...)`` sets it; its stream is kept under it).
    """

    def __init__(self, id: str, *args: Any, tenant: str = DEFAULT_TENANT, **kwargs: Any) -> None:
        super().__init__(id, *args, **kwargs)
        self.tenant = tenant

    def events(self, timeout: float = 300.0) -> Iterator[StreamEvent]:
        """Every event of the run's stream (see the module docstring) until it ends."""
        context = context_of(self.app)
        block_ms = context.settings.stream.read_block_ms
        return read_events(
            context.redis, self.id, tenant=self.tenant, timeout_s=timeout, block_ms=block_ms
        )

    def stream(self, timeout: float = 300.0) -> Iterator[str]:
        """The model's tokens of every step, in order, as they are generated."""
        return (e.text for e in self.events(timeout) if e.kind == TOKEN)

    async def aevents(self, timeout: float = 300.0) -> AsyncIterator[StreamEvent]:
        """:meth:`events` for asyncio."""
        settings = context_of(self.app).settings
        client = async_redis_client(settings)
        try:
            async for event in aread_events(
                client,
                self.id,
                tenant=self.tenant,
                timeout_s=timeout,
                block_ms=settings.stream.read_block_ms,
            ):
                yield event
        finally:
            await client.aclose()

    async def astream(self, timeout: float = 300.0) -> AsyncIterator[str]:
        """:meth:`stream` for asyncio: ``async for token in result.astream(): ...``."""
        async for event in self.aevents(timeout):
            if event.kind == TOKEN:
                yield event.text
