"""The true backlog of an agent queue: every priority sub-list plus its unacked messages.

Celery's Redis transport (kombu) keeps a queue ``q`` as several lists, one per priority
step: ``q`` (priority 0-2), ``q\\x06\\x163``, ``q\\x06\\x166``, ``q\\x06\\x169``. A message
a worker has taken but not yet acknowledged (acks late: a step in progress, or a retry
waiting for its countdown) leaves the lists for the ``unacked`` hash (delivery tag -> JSON
``[message, exchange, routing_key]``). ``LLEN q`` therefore undercounts; the backlog is the
sum of all of them. Of the unacked, those with an ``eta`` still ahead are *delayed* (a retry,
or a step come back later, waiting in a worker for its countdown); the rest are steps being
run. The arithmetic here is pure; :func:`read_backlog` is the Redis reader.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.transport import redis as kombu_redis

PRIORITY_STEPS: tuple[int, ...] = tuple(kombu_redis.PRIORITY_STEPS)
SEP: str = kombu_redis.Channel.sep
UNACKED_KEY: str = kombu_redis.Channel.unacked_key

_SNAPSHOT_MAX = 1_000  # unacked entries read in one atomic MULTI; beyond, HSCAN in pages
_SCAN_PAGE = 500

Routes = Mapping[tuple[str, str], str]
"""(exchange, routing key) -> queue, to tell which queue an unacked message came from."""


@dataclass(frozen=True, slots=True)
class Backlog:
    """Runs' step messages of one queue: waiting in its lists, and taken but not acked."""

    ready: int
    unacked: int
    delayed: int = 0  # of the unacked: waiting in a worker for their countdown (eta)

    @property
    def total(self) -> int:
        return self.ready + self.unacked

    @property
    def in_flight(self) -> int:
        """Steps taken and not waiting for a countdown: being run now."""
        return self.unacked - self.delayed


def priority_lists(queue: str, steps: Sequence[int] = PRIORITY_STEPS, sep: str = SEP) -> list[str]:
    """The Redis lists holding ``queue``'s messages, one per priority step (kombu's naming)."""
    return [f"{queue}{sep}{step}" if step else queue for step in steps]


def default_routes(queues: Iterable[str]) -> dict[tuple[str, str], str]:
    """Routes of agentq's queues: each has a direct exchange and routing key of its own name;
    a message sent through the default exchange ("") names its queue as routing key."""
    routes: dict[tuple[str, str], str] = {}
    for queue in queues:
        routes[(queue, queue)] = queue
        routes[("", queue)] = queue
    return routes


def _unacked(entry: bytes | str, routes: Routes) -> tuple[str | None, Any]:
    """The queue an ``unacked`` hash value belongs to (None: another queue, or unreadable)
    and its message."""
    try:
        message, exchange, routing_key = json.loads(entry)
    except (ValueError, TypeError):
        return None, None
    return routes.get((str(exchange or ""), str(routing_key or ""))), message


def unacked_queue(entry: bytes | str, routes: Routes) -> str | None:
    """The queue an ``unacked`` hash value belongs to (None: another queue, or unreadable)."""
    return _unacked(entry, routes)[0]


def eta_of(message: Any) -> float | None:
    """The Unix time a message's countdown ends (Celery's ``eta`` header); None without one."""
    headers = message.get("headers") if isinstance(message, dict) else None
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(eta)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()


def count_backlog(
    list_lengths: Mapping[str, Sequence[int]],
    unacked_entries: Iterable[bytes | str],
    routes: Routes,
    now: float | None = None,
) -> dict[str, Backlog]:
    """The backlog of each queue in ``list_lengths`` (queue -> its priority lists' lengths),
    adding the ``unacked`` hash values that ``routes`` map to it; with ``now`` (Unix time),
    those whose eta is after it count as delayed too."""
    unacked = dict.fromkeys(list_lengths, 0)
    delayed = dict.fromkeys(list_lengths, 0)
    for entry in unacked_entries:
        queue, message = _unacked(entry, routes)
        if queue in unacked:
            unacked[queue] += 1
            if now is not None and (eta := eta_of(message)) is not None and eta > now:
                delayed[queue] += 1
    return {
        queue: Backlog(ready=sum(lengths), unacked=unacked[queue], delayed=delayed[queue])
        for queue, lengths in list_lengths.items()
    }


def read_backlog(
    client: Any,
    queues: Iterable[str],
    *,
    routes: Routes | None = None,
    steps: Sequence[int] = PRIORITY_STEPS,
    sep: str = SEP,
    unacked_key: str = UNACKED_KEY,
) -> dict[str, Backlog]:
    """Read every queue's lists and the unacked hash from Redis and count each backlog.

    Up to ``_SNAPSHOT_MAX`` unacked messages, the lists and the hash are read in one MULTI,
    so a message moving between them (taken, or restored after its visibility timeout) is
    counted exactly once. A bigger hash is paged with HSCAN after the lists; a message
    moving meanwhile may then be counted twice or missed until the next read.
    """
    queues = list(queues)
    routes = routes if routes is not None else default_routes(queues)
    keys = {queue: priority_lists(queue, steps, sep) for queue in queues}
    small = int(client.hlen(unacked_key)) <= _SNAPSHOT_MAX
    pipe = client.pipeline(transaction=True)
    for names in keys.values():
        for name in names:
            pipe.llen(name)
    if small:
        pipe.hvals(unacked_key)
    replies = pipe.execute()
    lengths: dict[str, list[int]] = {}
    at = 0
    for queue, names in keys.items():
        lengths[queue] = [int(n) for n in replies[at : at + len(names)]]
        at += len(names)
    entries: Iterable[bytes] = (
        replies[at] if small else (v for _, v in client.hscan_iter(unacked_key, count=_SCAN_PAGE))
    )
    return count_backlog(lengths, entries, routes, time.time())
