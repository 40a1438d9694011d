"""Everything that touches Celery or kombu beyond their public API, fenced in one package.

Outside this package, agentq imports from Celery and kombu only a short public allowlist and
never names an attribute listed here (``tests/unit/celery_ext/test_fence.py`` walks ``app/``
to hold it so). Inside: :mod:`.transport` (the fetch: kombu's Redis channel overridden),
:mod:`.envelope` (protocol-2 messages built directly), :mod:`.results` (Celery's result
meta written directly), :mod:`.worker` (a running worker's state), :mod:`.backlog` (kombu's
key names).

:data:`PRIVATE_NAMES` lists every private name used, each with the test that fails if its
behaviour changes. "Private" means a leading underscore, or a name Celery's and kombu's user
guides do not document: either may change in any release. ``uv.lock`` pins both libraries;
:func:`check_internals` runs at worker start (a worker bootstep, so ``celery -A
app.celery_app worker`` checks too) and stops a worker whose Celery or kombu lacks one, with
one line, instead of failing mid-run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

from app.errors import CeleryInternalsError


@dataclass(frozen=True, slots=True)
class PrivateName:
    """One private name agentq relies on: ``owner`` (``module`` or ``module:Class``) has
    attribute ``name``; ``guard`` is the test that fails if its behaviour changes."""

    owner: str
    name: str
    guard: str
    set_in_init: bool = False
    """An instance attribute: checked as one that ``owner.__init__`` assigns."""
    common: bool = False
    """Also an everyday word of other APIs (redis-py's ``set``, ``str.encode``): the fence test
    cannot forbid it by name outside this package."""

    def exists(self) -> bool:
        """Whether the installed Celery/kombu still has it."""
        module_name, _, attr_path = self.owner.partition(":")
        try:
            owner: Any = importlib.import_module(module_name)
            for part in filter(None, attr_path.split(".")):
                owner = getattr(owner, part)
        except (ImportError, AttributeError):
            return False
        if self.set_in_init:
            init = getattr(owner, "__init__", None)
            return self.name in getattr(getattr(init, "__code__", None), "co_names", ())
        return hasattr(owner, self.name)

    def __str__(self) -> str:
        return f"{self.owner}.{self.name}"


_FETCH = "tests/integration/celery_ext/test_fetch.py"
_TRANSPORT = "tests/integration/celery_ext/test_transport.py"
_CLIENT = "tests/unit/celery_ext/test_transport.py"
_BACKLOG = "tests/integration/celery_ext/test_backlog.py"
_RESULTS = "tests/unit/celery_ext/test_result_value.py"
_ENVELOPE = "tests/integration/celery_ext/test_envelope.py"
_SHUTDOWN = "tests/e2e/test_graceful_shutdown.py"
_WORKER = "tests/unit/celery_ext/test_worker.py"
_EXIT = "tests/e2e/test_worker_exit.py"
_SUBMIT = "tests/integration/producer/test_submit.py"
_QUEUED = "tests/integration/celery_ext/test_queued_index.py"
_INTAKE = "tests/integration/celery_ext/test_quarantine.py"
_SENTINEL = "tests/e2e/test_sentinel_failover.py"

_REDIS_CHANNEL = "kombu.transport.redis:Channel"

PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # transport.py: the fetch overrides kombu's BRPOP poll of the Redis channel ...
    PrivateName("kombu.transport.redis", "Channel", _FETCH),
    PrivateName("kombu.transport.redis", "QoS", _FETCH),
    PrivateName("kombu.transport.redis", "Transport", _CLIENT),
    PrivateName("kombu.transport.redis:Transport", "Channel", _CLIENT),
    PrivateName(_REDIS_CHANNEL, "QoS", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_brpop_start", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_brpop_read", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_queue_cycle", _FETCH, set_in_init=True),
    PrivateName(_REDIS_CHANNEL, "_q_for_pri", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_in_poll", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_brpop_sent_at", _FETCH),
    PrivateName(_REDIS_CHANNEL, "_flush_brpop_reauth", _FETCH),
    PrivateName(_REDIS_CHANNEL, "basic_consume", _FETCH),
    PrivateName(_REDIS_CHANNEL, "ack_emulation", _FETCH),
    PrivateName(_REDIS_CHANNEL, "global_keyprefix", _FETCH),
    PrivateName(_REDIS_CHANNEL, "priority_steps", _FETCH),
    PrivateName(_REDIS_CHANNEL, "brpop_timeout", _FETCH, set_in_init=True, common=True),
    PrivateName(_REDIS_CHANNEL, "connection_errors", _FETCH, set_in_init=True, common=True),
    PrivateName(_REDIS_CHANNEL, "active_queues", _FETCH, common=True),
    PrivateName(_REDIS_CHANNEL, "client", _FETCH, common=True),
    PrivateName("kombu.transport.virtual.base:Transport", "_deliver", _FETCH),
    # ... records what it takes as unacked itself, and lets a step ack in its own pipeline
    # (the QoS ack bypass: kombu's in-memory bookkeeping without its Redis round trip) ...
    PrivateName("kombu.transport.redis:QoS", "ack", _FETCH, common=True),
    PrivateName("kombu.transport.redis:QoS", "reject", _FETCH, common=True),
    PrivateName("kombu.transport.redis:QoS", "append", _FETCH, common=True),
    PrivateName("kombu.transport.virtual.base:QoS", "ack", _FETCH, common=True),
    PrivateName("kombu.transport.virtual.base:QoS", "append", _FETCH, common=True),
    PrivateName("kombu.transport.virtual.base:QoS", "can_consume_max_estimate", _FETCH),
    PrivateName(_REDIS_CHANNEL, "unacked_key", _FETCH),
    PrivateName(_REDIS_CHANNEL, "unacked_index_key", _FETCH),
    # ... delivers a checked message with the body its check decoded (not decoded twice) ...
    PrivateName("kombu.transport.virtual.base", "Message", _INTAKE),
    PrivateName("kombu.transport.virtual.base:Channel", "Message", _INTAKE),
    PrivateName("kombu.message:Message", "_decoded_cache", _INTAKE, set_in_init=True),
    # ... keeps one client per channel, and survives a close after its connection went.
    PrivateName(_REDIS_CHANNEL, "conn_or_acquire", _CLIENT),
    PrivateName(_REDIS_CHANNEL, "_create_client", _CLIENT),
    PrivateName(_REDIS_CHANNEL, "pool", _CLIENT, common=True),
    PrivateName(_REDIS_CHANNEL, "_connparams", _TRANSPORT),
    PrivateName("kombu.transport", "TRANSPORT_ALIASES", _CLIENT),
    # ... and runs on the master that Redis Sentinels name (kombu's sentinel pool).
    PrivateName("kombu.transport.redis", "SentinelChannel", _SENTINEL),
    PrivateName("kombu.transport.redis", "SentinelTransport", _SENTINEL),
    PrivateName("kombu.transport.redis:SentinelTransport", "Channel", _SENTINEL),
    PrivateName("kombu.transport.redis:SentinelChannel", "from_transport_options", _SENTINEL),
    PrivateName("kombu.transport.redis:SentinelChannel", "_sentinel_managed_pool", _SENTINEL),
    PrivateName(_REDIS_CHANNEL, "_sentinel_manager", _SENTINEL, set_in_init=True),
    # ... and pushes a new run's first message in one MULTI with its queued-runs index entry.
    PrivateName(_REDIS_CHANNEL, "_put", _QUEUED),
    PrivateName(_REDIS_CHANNEL, "_expires", _QUEUED, set_in_init=True),
    PrivateName("kombu.transport.virtual.base:Channel", "_get_message_priority", _QUEUED),
    PrivateName("kombu.transport.virtual.base:Channel", "decode_body", _QUEUED),
    PrivateName(_REDIS_CHANNEL, "from_transport_options", _QUEUED),
    # backlog.py: kombu's key names for a queue's priority lists and its unacked messages.
    PrivateName("kombu.transport.redis", "PRIORITY_STEPS", _BACKLOG),
    PrivateName(_REDIS_CHANNEL, "sep", _BACKLOG, common=True),
    # envelope.py: Celery's protocol 2 in kombu's Redis envelope, built without apply_async.
    PrivateName("celery.app.base:Celery", "thread_oid", _ENVELOPE),
    PrivateName("celery.utils.nodenames", "anon_nodename", _ENVELOPE),
    # results.py: Celery's result meta written by the worker, under the backend's key.
    PrivateName("celery.backends.redis:RedisBackend", "get_key_for_task", _RESULTS),
    PrivateName("celery.backends.redis:RedisBackend", "encode", _RESULTS, common=True),
    PrivateName("celery.backends.redis:RedisBackend", "set", _RESULTS, common=True),
    PrivateName("celery.backends.redis:RedisBackend", "ensure", _RESULTS, common=True),
    PrivateName(
        "celery.backends.base:BaseBackend", "expires", _RESULTS, set_in_init=True, common=True
    ),
    PrivateName("celery.result:AsyncResult", "ignored", _SUBMIT),
    # worker.py: a running worker's requests, message tags, queues, node name and exit code.
    PrivateName("celery.worker.state", "active_requests", _SHUTDOWN),
    PrivateName("celery.worker.state", "reserved_requests", _SHUTDOWN),
    PrivateName("celery.worker.request:Request", "acknowledged", _SHUTDOWN),
    PrivateName("celery.worker.request:Request", "message", _SHUTDOWN, common=True),
    PrivateName("celery.app.task:Context", "properties", _FETCH, common=True),
    PrivateName("celery.app.amqp:Queues", "consume_from", _WORKER),
    PrivateName("celery.utils.nodenames", "host_format", _WORKER),
    PrivateName("celery.worker.worker:WorkController", "exitcode", _EXIT),
)
"""Every private Celery/kombu name agentq uses, with the test that guards it."""


def check_internals(names: tuple[PrivateName, ...] = PRIVATE_NAMES) -> None:
    """Raise :class:`CeleryInternalsError` (one line: what is missing, which versions are
    installed) if the installed Celery or kombu lacks any of ``names``."""
    missing = [str(n) for n in names if not n.exists()]
    if missing:
        raise CeleryInternalsError(
            f"this Celery {version('celery')} / kombu {version('kombu')} lacks "
            f"{', '.join(missing)}, which agentq relies on: install the versions uv.lock pins"
        )
