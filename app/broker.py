"""kombu's Redis transport, with one client per channel instead of one per operation.

kombu builds a new ``redis.Redis`` object for every ack, QoS update and queue operation
(``Channel.conn_or_acquire``); with redis-py 8 that costs ~150 us of CPU each time, on the
worker's consumer thread, which dispatches every step (profiled: 15% of a worker's CPU).
A client is thread-safe (each command borrows a connection from the pool), so the channel
keeps one, rebuilt whenever kombu replaces its connection pool. Everything else is kombu's.

:func:`install` registers it for the ``redis://`` and ``rediss://`` schemes, so broker URLs
read as usual (worker banner, Flower).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def install() -> None:
    """Make ``redis://`` and ``rediss://`` broker URLs use this transport (idempotent)."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
