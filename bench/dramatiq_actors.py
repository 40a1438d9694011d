"""The Dramatiq side's worker module: a Redis broker, its result backend and two actors.

What a user would write with Dramatiq: ``RedisBroker(url=...)`` with Dramatiq's default
middleware, plus its ``Results`` middleware on Redis so each message's result is stored, as
stock Celery's Redis backend stores each task's. The backend also publishes the outcome on
``celery-task-meta-<message id>`` in the same pipeline (Celery's backend does SETEX and
PUBLISH in one pipeline too), so the suite's :class:`~bench.services.ResultWatch` sees all
three sides alike. Nothing here imports agentq: the worker's start-up is Dramatiq's own.

``python -m dramatiq bench.dramatiq_actors:setup -p 1 -t 8`` runs the worker; the broker's
URL comes from the environment (``BENCH_DRAMATIQ_REDIS_URL``), since Dramatiq's CLI imports
the module by name and passes it nothing.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend
from dramatiq.results.result import wrap_exception, wrap_result

URL_ENV = "BENCH_DRAMATIQ_REDIS_URL"
QUEUE = "dramatiq-bench"
NOOP, STAMP = "noop", "stamp"
CHANNEL_PREFIX = "celery-task-meta-"  # the channel the suite's ResultWatch reads (bench/services)


class PublishingBackend(RedisBackend):
    """Dramatiq's Redis result backend, which also publishes each outcome for the bench."""

    def _store_and_publish(self, message: Any, stored: Any, status: str, ttl: int) -> None:
        # RedisBackend._store's three commands, and the PUBLISH, in one round trip.
        key = self.build_message_key(message)
        with self.client.pipeline() as pipe:
            pipe.delete(key)
            pipe.lpush(key, self.encoder.encode(stored))
            pipe.pexpire(key, ttl)
            pipe.publish(CHANNEL_PREFIX + message.message_id, json.dumps({"status": status}))
            pipe.execute()

    def store_result(self, message: Any, result: Any, ttl: int) -> None:
        self._store_and_publish(message, wrap_result(result), "SUCCESS", ttl)

    def store_exception(self, message: Any, exception: Exception, ttl: int) -> None:
        self._store_and_publish(message, wrap_exception(exception), "FAILURE", ttl)


def broker_for(url: str) -> RedisBroker:
    """A Redis broker on ``url`` with Dramatiq's default middleware and Results on Redis."""
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=PublishingBackend(url=url), store_results=True))
    return broker


def noop() -> None:
    """Does nothing: what dispatching a message costs, and nothing else."""


def stamp() -> float:
    """When the message started (Unix time): the latency probe."""
    return time.time()


def declare(broker: RedisBroker) -> dict[str, dramatiq.Actor[Any, Any]]:
    """The two actors on ``broker``, by name (no retries: Celery retries nothing by default)."""
    return {
        name: dramatiq.actor(actor_name=name, queue_name=QUEUE, broker=broker, max_retries=0)(fn)
        for name, fn in ((NOOP, noop), (STAMP, stamp))
    }


def setup() -> None:
    """What ``python -m dramatiq bench.dramatiq_actors:setup`` calls in the worker process."""
    broker = broker_for(os.environ[URL_ENV])
    dramatiq.set_broker(broker)
    declare(broker)
