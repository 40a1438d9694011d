"""Each agent type's queue at one moment: step messages waiting, taken, running and delayed,
how long the oldest has waited, and its dead letters (``agentq queues``, the run inspector).

*In flight* is the unacked messages not waiting for a countdown: with a prefetch of one per
thread, a worker holds no more than it runs, so these are the steps being run now (a lease,
by contrast, is held only while a step runs and is keyed by run, not by queue). *Delayed* are
the unacked ones a worker holds until their ``eta``: retries and steps come back later.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from app.agents.registry import AgentRegistry
from app.celery_ext import queued
from app.celery_ext.backlog import priority_lists, read_backlog
from app.celery_ext.envelope import ENQUEUED_AT
from app.config import Settings
from app.constants import DEAD_LETTERS
from app.ops.redis_clients import redis_client

_SCAN_PAGE = 500


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One agent type's queue: its step messages and dead letters."""

    agent: str
    queue: str
    ready: int  # waiting in the queue's lists, every priority
    unacked: int  # taken by a worker, not yet acknowledged
    in_flight: int  # of the unacked: steps being run
    delayed: int  # of the unacked: waiting in a worker for their countdown (retries)
    oldest_waiting_s: float | None  # the oldest ready message's age; None: none, or not stamped
    dead_letters: int  # this agent type's runs in the dead-letter queue

    def to_json(self) -> dict[str, Any]:
        """The fields as a dict of JSON types."""
        return asdict(self)


def select_agents(registry: AgentRegistry, values: Iterable[str]) -> tuple[list[str], list[str]]:
    """The agent types ``values`` name, each an agent type or a queue name (every agent type
    of that queue), comma-separated or one per value; and the values that name neither."""
    by_queue: dict[str, list[str]] = {}
    for spec in registry:
        by_queue.setdefault(spec.queue_name, []).append(spec.name)
    chosen: dict[str, None] = {}
    unknown: list[str] = []
    for name in (n.strip() for value in values for n in value.split(",")):
        if name in registry:
            chosen[name] = None
        elif name in by_queue:
            chosen.update(dict.fromkeys(by_queue[name]))
        elif name:
            unknown.append(name)
    return list(chosen), unknown


def enqueued_at(raw: bytes | str | None) -> float | None:
    """When a queued message was enqueued (its ``agentq_enqueued_at`` header); None when it
    has none (a producer other than agentq's) or is no JSON envelope."""
    try:
        headers = json.loads(raw)["headers"] if raw is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    when = headers.get(ENQUEUED_AT) if isinstance(headers, dict) else None
    return float(when) if isinstance(when, (int, float)) else None


def oldest_enqueued(client: Any, queues: Iterable[str]) -> dict[str, float | None]:
    """Each queue's oldest stamped ready message's enqueue time: the earliest among the tails of
    its priority lists (kombu pushes on the left and takes from the right)."""
    keys = {queue: priority_lists(queue) for queue in queues}
    pipe = client.pipeline(transaction=False)
    for names in keys.values():
        for name in names:
            pipe.lindex(name, -1)
    tails = iter(pipe.execute())
    oldest: dict[str, float | None] = {}
    for queue, names in keys.items():
        times = [t for t in (enqueued_at(next(tails)) for _ in names) if t is not None]
        oldest[queue] = min(times, default=None)
    return oldest


def dead_letters_by_agent(client: Any) -> dict[str, int]:
    """How many dead letters each agent type has (quarantined messages count under "")."""
    counts: dict[str, int] = {}
    for _, raw in client.hscan_iter(DEAD_LETTERS, count=_SCAN_PAGE):
        try:
            agent = str(json.loads(raw).get("agent") or "")
        except (ValueError, AttributeError):
            agent = ""
        counts[agent] = counts.get(agent, 0) + 1
    return counts


def queue_stats(
    broker: Any,
    registry: AgentRegistry,
    agents: Iterable[str] | None = None,
    *,
    store: Any = None,
    now: float | None = None,
) -> list[QueueStats]:
    """The queue of each of ``agents`` (default: every agent type), in registry order, read
    from ``broker`` (the Redis of the queues) and ``store`` (of the dead letters; default:
    the broker)."""
    names = registry.names if agents is None else list(agents)
    queue_of = {name: registry.spec(name).queue_name for name in names}
    queues = sorted(set(queue_of.values()))
    backlog = read_backlog(broker, queues)
    oldest = oldest_enqueued(broker, queues)
    dead = dead_letters_by_agent(broker if store is None else store)
    now = time.time() if now is None else now
    stats = []
    for name, queue in queue_of.items():
        b, since = backlog[queue], oldest[queue]
        stats.append(
            QueueStats(
                agent=name,
                queue=queue,
                ready=b.ready,
                unacked=b.unacked,
                in_flight=b.in_flight,
                delayed=b.delayed,
                oldest_waiting_s=None if since is None or not b.ready else max(0.0, now - since),
                dead_letters=dead.get(name, 0),
            )
        )
    return stats


def read_queue_stats(
    settings: Settings, registry: AgentRegistry, agents: Iterable[str] | None = None
) -> list[QueueStats]:
    """:func:`queue_stats` read with clients built from ``settings`` (closed after)."""
    broker = redis_client(settings, settings.broker)
    store = redis_client(settings)
    try:
        return queue_stats(broker, registry, agents, store=store)
    finally:
        broker.close()
        store.close()


def purge_ready(broker: Any, queues: Mapping[str, str]) -> dict[str, int]:
    """Delete the ready messages of ``queues`` (queue -> its agent type; every priority list,
    not the unacked ones a worker holds) in one MULTI that also reads them, then drop their
    runs from the index of queued runs (:mod:`app.celery_ext.queued`): a purged run is not
    listed as queued. How many messages each queue had."""
    keys = {queue: priority_lists(queue) for queue in queues}
    pipe = broker.pipeline(transaction=True)
    for names in keys.values():
        for name in names:
            pipe.lrange(name, 0, -1)
        pipe.delete(*names)
    replies = iter(pipe.execute())
    purged = {}
    with broker.pipeline(transaction=False) as forget:
        for queue, names in keys.items():
            messages = [m for _ in names for m in next(replies)]
            next(replies)  # the DEL's reply
            purged[queue] = len(messages)
            oldest_first = reversed(messages)  # as the index is searched
            queued.forget(forget, queues[queue], filter(None, map(_run_of, oldest_first)))
        forget.execute()
    return purged


def _run_of(raw: bytes) -> str | None:
    """The run id of a step message as the transport keeps it (its root id, else its id)."""
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None  # not a message agentq wrote: nothing of it is indexed
    run_id = headers.get("root_id") or headers.get("id")
    return run_id if isinstance(run_id, str) else None
