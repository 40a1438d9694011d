"""kombu's Redis transport, with a fetch that cannot lose a message and one client per channel.

**Fetch.** kombu takes a message with ``BRPOP`` and only then records it as unacknowledged
(``HSET unacked`` + ``ZADD unacked_index``) in a second round trip. A worker killed in
between, or a Redis that goes away in between, loses the message for good: it is in no list
and in no unacked hash, so no visibility timeout brings it back (the chaos test saw about one
lost step per few SIGKILLs on a busy machine). Here a Lua script (``lua/take.lua``) pops
messages and records them in one atomic step, so every message is always either waiting in
its list or restorable.
One fetch takes as many messages as the prefetch limit leaves room for (at most
:data:`FETCH_MAX`): a worker whose threads finish a batch of model calls together refills
them in one round trip, not one per thread.
While the lists are empty the channel blocks on ``BLMOVE q q LEFT LEFT`` (a rotation that
moves nothing: it only wakes the channel when its first queue gets a message), then fetches
with the script; other queues and the priority sub-lists are looked at on every fetch and at
least every ``brpop_timeout`` (every :data:`MULTI_QUEUE_WAIT_S` for a channel of several
queues, which rotate into the first place). Consumers without acknowledgements (Celery's
reply queues) keep kombu's ``BRPOP``.

**One client.** kombu builds a new ``redis.Redis`` object for every ack, QoS update and queue
operation (``Channel.conn_or_acquire``); with redis-py 8 that costs ~150 us of CPU each time,
on the worker's consumer thread, which dispatches every step (profiled: 15% of a worker's
CPU). A client is thread-safe (each command borrows a connection from the pool), so the
channel keeps one, rebuilt whenever kombu replaces its connection pool.

**Intake.** What the fetch takes is checked before kombu or Celery sees it. The script
moves what it cannot record as unacked (not JSON, not an object, no delivery tag) to the
dead letters as quarantined, in the same atomic step; what it recorded but fails
:func:`app.celery_ext.intake.check` (the envelope schema) is quarantined and dropped from
unacked in one MULTI. Neither reaches a task or stops the worker, and the other messages of
the fetch are delivered at once.

**Queued runs.** A run's first message as ``submit()`` publishes it (header
:data:`~app.celery_ext.envelope.NEW_RUN`) is pushed in one MULTI with the run's entry in the
queued-runs index (:mod:`app.celery_ext.queued`), kept ``queued_ttl_s`` (a transport option).

:func:`install` registers it for the ``redis://`` and ``rediss://`` schemes, and its
:class:`SentinelChannel` for ``sentinel://``, so broker URLs read as usual (worker banner,
Flower).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from time import monotonic, time
from typing import Any
from urllib.parse import urlsplit

import redis.sentinel
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis.exceptions import NoScriptError, RedisError

from app.celery_ext import queued
from app.celery_ext.envelope import NEW_RUN
from app.celery_ext.intake import (
    QUARANTINE_KEEP_DEFAULT,
    Intake,
    QuarantineReason,
    accept,
    parse,
    quarantine_entry,
)
from app.constants import DEAD_LETTER_INDEX, DEAD_LETTERS, QUARANTINE_COUNTER
from app.ops import metrics
from app.ops.redis_scripts import Script

log = logging.getLogger(__name__)

# Pops messages and records them as unacknowledged in one atomic step (see the file).
TAKE = Script("app.celery_ext", "lua/take.lua")
FETCH_MAX = 64
"""Messages one fetch takes at most (fewer when the prefetch limit leaves fewer free)."""
MULTI_QUEUE_WAIT_S = 0.1
"""Longest idle wait of a channel that consumes several queues (see the module docstring)."""

_FETCH, _WAIT = "fetch", "wait"
# kombu's default key names (transport options can rename them: see acks_in_pipelines).
UNACKED, UNACKED_INDEX = kombu_redis.Channel.unacked_key, kombu_redis.Channel.unacked_index_key


@dataclass(frozen=True, slots=True)
class IntakeRules:
    """What this process's fetch checks and how it quarantines (:func:`check_envelopes`)."""

    intake: Intake | None = None  # None: only what the script checks (not a worker)
    worker: str = socket.gethostname()  # the name quarantined entries are stored with
    keep: int = QUARANTINE_KEEP_DEFAULT  # bytes of a quarantined message kept


_rules = IntakeRules()


def check_envelopes(rules: IntakeRules) -> None:
    """Check every message this process fetches by ``rules`` (a worker, at start)."""
    global _rules
    _rules = rules


def _quarantined(reason: str, entry_id: str) -> None:
    metrics.quarantined(reason)
    log.warning("quarantined a message (%s): see `agentq dlq show %s`", reason, entry_id)


# Delivery tags whose unacked entry a step removed itself, in the MULTI that handed the step
# on (:func:`ack_on`); kombu's ack of them then only does its bookkeeping.
_acked_in_pipeline: set[str] = set()


def ack_on(pipe: Any, tag: str) -> None:
    """Queue the acknowledgement of the message delivered as ``tag`` on Redis pipeline ``pipe``
    (what kombu's ack sends); call :func:`acked` once the pipeline has executed. Only for
    brokers whose transport options keep kombu's key names (see :func:`acks_in_pipelines`)."""
    pipe.zrem(UNACKED_INDEX, tag)
    pipe.hdel(UNACKED, tag)


def acks_in_pipelines(broker_url: str, redis_url: str, transport_options: dict[str, Any]) -> bool:
    """Whether a step may acknowledge its message in its own pipeline on ``redis_url``: the
    broker is that Redis, with kombu's unacked key names."""
    renamed = {"global_keyprefix", "unacked_key", "unacked_index_key"} & set(transport_options)
    same = broker_url == redis_url and broker_url.startswith(("redis", "rediss", "sentinel"))
    return same and not renamed


def acked(tag: str) -> None:
    """The pipeline holding :func:`ack_on` for ``tag`` executed: Celery's own ack of it skips
    the round trip."""
    _acked_in_pipeline.add(tag)


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    def ack(self, delivery_tag: Any) -> None:
        if delivery_tag in _acked_in_pipeline:
            _acked_in_pipeline.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        _acked_in_pipeline.discard(delivery_tag)  # acknowledged already: nothing to restore
        super().reject(delivery_tag, requeue=requeue)

    def append(self, message: Any, delivery_tag: Any) -> None:
        taken = self.channel._taken
        if delivery_tag in taken:
            # Already recorded as unacked by the fetch script: only track it here.
            taken.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


# The payload key of a body the intake check decoded already (never sent: a fetched dict only).
_DECODED = "agentq.decoded"


class Message(virtual.Message):  # type: ignore[misc]
    """kombu's message, with the body the intake check decoded: Celery asks for it at once,
    and kombu would decode it again (5.5 us a message)."""

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        call = payload.pop(_DECODED, None)
        super().__init__(payload, channel, **kwargs)
        if call is not None:
            self._decoded_cache = call


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    Message = Message
    # How long a new run's entry in the queued-runs index lives (limits.queued_ttl_s).
    queued_ttl_s = 7 * 86_400
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "queued_ttl_s")  # type: ignore[assignment]
    _shared_client: Any = None
    _sent: str | None = None  # what the pending poll command is: _FETCH, _WAIT or BRPOP
    _fetch_next = True  # a fetch may find a message (else block until one arrives)
    _fetch_limit = 1  # how many messages the pending fetch asked for
    _take_loaded = False  # TAKE registered on the broker (again after a restart, SCRIPT FLUSH)
    # kombu's poll state, typed as kombu uses it: the connection polled on, when it was sent.
    _in_poll: Any = False
    _brpop_sent_at: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._taken: set[str] = set()
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)
        self._sync_params: dict[str, Any] = super()._connparams()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def _connparams(self, asynchronous: bool = False) -> Any:
        # After a connection loss Celery detaches the kombu connection before closing the
        # channel, whose close then restores unacked messages (and late acks arrive): kombu
        # would fail with AttributeError and kill the worker. Use the channel's parameters.
        if self.connection.client is None and not asynchronous:
            return dict(self._sync_params)
        return super()._connparams(asynchronous=asynchronous)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        # A run's first message as submit() publishes it: pushed in one MULTI with the run's
        # entry in the queued-runs index (app.celery_ext.queued).
        headers = message.get("headers") or {}
        if (
            headers.get(NEW_RUN) is not True
            or "_publish_batch" in kwargs
            or (self._expires and queue in self._expires)
        ):
            super()._put(queue, message, **kwargs)
            return
        body = json.loads(
            self.decode_body(message["body"], message["properties"].get("body_encoding"))
        )
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, dumps(message))
            queued.add_one(pipe, str(headers["id"]), body[1], int(self.queued_ttl_s))
            pipe.execute()

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        if not self.ack_emulation or self.global_keyprefix or self._no_ack_queues & set(queues):
            self._sent = "BRPOP"
            super()._brpop_start(timeout)
            return
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        if self._fetch_next and not self._take_loaded:
            with self.conn_or_acquire() as client:  # a round trip once, before the poll
                TAKE.load(client)
            self._take_loaded = True
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        if self._fetch_next:
            self._sent = _FETCH
            room = self.qos.can_consume_max_estimate()  # None: no prefetch limit
            self._fetch_limit = FETCH_MAX if room is None else max(1, min(room, FETCH_MAX))
            # EVALSHA sent and its reply parsed here: redis-py's NOSCRIPT fallback does not
            # apply, so a NOSCRIPT reply (see _brpop_read) has the next fetch load it again.
            connection.send_command(
                "EVALSHA", TAKE.sha, 5 + len(keys), self.unacked_key, self.unacked_index_key,
                DEAD_LETTERS, DEAD_LETTER_INDEX, QUARANTINE_COUNTER,
                *keys, time(), self._fetch_limit, _rules.keep, _rules.worker,
            )  # fmt: skip
        else:
            self._sent = _WAIT
            wait = self.brpop_timeout if timeout is None else timeout
            if len(queues) > 1:
                # The wait wakes for its first queue only: a worker of several agent types
                # looks at the others this often, or a hop between them (a sub-agent run, its
                # parent's next step) would wait up to brpop_timeout.
                wait = min(wait or MULTI_QUEUE_WAIT_S, MULTI_QUEUE_WAIT_S)
            first = keys[0]
            connection.send_command("BLMOVE", first, first, "LEFT", "LEFT", wait or 0)

    def _brpop_read(self, **options: Any) -> bool:
        sent, self._sent = self._sent, None
        if sent not in (_FETCH, _WAIT):
            return bool(super()._brpop_read(**options))
        try:
            try:
                reply = self.client.parse_response(
                    self.client.connection, "EVALSHA" if sent == _FETCH else "BLMOVE", **options
                )
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects
                raise
            except NoScriptError:
                # Redis restarted or its scripts were flushed: load it, fetch on the next poll.
                self._take_loaded, self._fetch_next = False, True
                raise Empty() from None
            # A wait ends when a message arrives or after brpop_timeout: fetch next either way.
            # A fetch that took fewer than it asked for emptied every list: wait next.
            self._fetch_next = sent == _WAIT or len(reply) >= 3 * self._fetch_limit
            if sent == _WAIT or not reply:
                raise Empty()
            if not self._deliver_taken(reply):
                raise Empty()  # the script or the check quarantined every one
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _deliver_taken(self, reply: list[Any]) -> int:
        """Deliver what the script took (``reply``: its triples), quarantining what fails the
        check; how many were delivered."""
        rejected: list[tuple[bytes, bytes, QuarantineReason, str]] = []
        delivered = 0
        for dest, tag, item in zip(reply[::3], reply[1::3], reply[2::3], strict=True):
            if dest is None:  # the script quarantined it: (None, reason, entry id)
                _quarantined(bytes_to_str(tag), bytes_to_str(item))
                continue
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            try:
                payload = parse(item)
            except (ValueError, RecursionError):
                rejected.append((tag, item, QuarantineReason.NOT_JSON, queue))
                continue
            intake = _rules.intake
            reason, call = (None, None) if intake is None else accept(payload, intake, len(item))
            if reason is not None:
                rejected.append((tag, item, reason, queue))
                continue
            if call is not None:
                payload[_DECODED] = call  # taken off again by Message below
            # Recorded as unacked already: one that a failing delivery leaves undelivered
            # comes back after its visibility timeout.
            self._taken.add(bytes_to_str(tag))
            self._queue_cycle.rotate(queue)
            self.connection._deliver(payload, queue)
            delivered += 1
        if rejected:
            self._quarantine(rejected)
        return delivered

    def _quarantine(self, rejected: list[tuple[bytes, bytes, QuarantineReason, str]]) -> None:
        """Move messages recorded as unacked to the quarantine, in one MULTI."""
        now = time()
        try:
            with self.conn_or_acquire() as client:
                last = int(client.incrby(QUARANTINE_COUNTER, len(rejected)))
                ids = [f"quarantine-{n}" for n in range(last - len(rejected) + 1, last + 1)]
                pipe = client.pipeline(transaction=True)
                for entry_id, (tag, item, reason, queue) in zip(ids, rejected, strict=True):
                    entry = quarantine_entry(
                        entry_id, item, reason, queue, _rules.worker, now, _rules.keep
                    )
                    pipe.hset(DEAD_LETTERS, entry_id, entry)
                    pipe.zadd(DEAD_LETTER_INDEX, {entry_id: now})
                    pipe.hdel(self.unacked_key, tag)
                    pipe.zrem(self.unacked_index_key, tag)
                pipe.execute()
        except RedisError as exc:
            # Still in unacked: they come back after the visibility timeout, checked again.
            log.error("could not quarantine %d message(s) yet: %s", len(rejected), exc)
            return
        for entry_id, (_, _, reason, _) in zip(ids, rejected, strict=True):
            _quarantined(reason, entry_id)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """:class:`Channel` on the master that Redis Sentinels name (kombu's connection pool for
    ``sentinel://`` URLs, transport option ``master_name``): the same fetch, acks and client,
    each new connection asking the Sentinels where the master is now."""

    from_transport_options = tuple(  # type: ignore[assignment]
        dict.fromkeys(
            (*Channel.from_transport_options, *kombu_redis.SentinelChannel.from_transport_options)
        )
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The Sentinels' addresses, for a pool made after Celery detached the connection.
        default_port = self.connection.default_port
        self._sentinels = [
            (parts.hostname, parts.port or default_port)
            for parts in map(urlsplit, self.connection.client.alt)
            if parts.scheme == "sentinel"
        ] or [(self._sync_params["host"], self._sync_params["port"])]

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu reads the addresses from the kombu connection, which Celery detaches before
        # it closes the channel after a connection loss (see Channel._connparams): the
        # close's restore of unacked messages and late acks would kill the worker.
        if asynchronous or self.connection.client is not None:
            return super()._sentinel_managed_pool(asynchronous)
        params = self._connparams()
        params.pop("host", None)
        params.pop("port", None)
        manager = redis.sentinel.Sentinel(
            self._sentinels,
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=getattr(self, "sentinel_kwargs", None),
            **params,
        )
        self._sentinel_manager = manager  # closed by kombu with the pool
        credentials = {k: params[k] for k in ("username", "password") if k in params}
        master = manager.master_for(getattr(self, "master_name", None), redis.Redis, **credentials)
        return master.connection_pool


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


def install() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use this transport
    (idempotent)."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
