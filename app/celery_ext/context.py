"""What the producer and the worker share, one :class:`AgentqContext` per Celery app.

:func:`app.celery_ext.app.create_celery` builds it; :func:`context_of` finds it. Clients are
built on first use, so a producer that never submits opens no connection.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery
from redis import Redis

from app.agents.registry import AgentRegistry
from app.config import Settings
from app.errors import ConfigurationError
from app.ops.redis_clients import redis_client

if TYPE_CHECKING:  # built by the worker's modules, which import this one
    from app.memory.sessions import SessionStore
    from app.ops.health import WorkerHealth
    from app.tasks.runtime import WorkerRuntime


@dataclass(eq=False)
class AgentqContext:
    """Settings, agent types and clients of one Celery app."""

    settings: Settings
    registry: AgentRegistry
    runtime: WorkerRuntime | None = None
    """The worker's clients (session store, model pools), built by ``runtime_for``."""
    health: WorkerHealth | None = None
    """The worker's health endpoints, while they serve (``health.enabled``)."""
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    """Held while a lazy field is built, so threads build it once."""
    _redis: Redis | None = field(default=None, repr=False)
    _broker: Redis | None = field(default=None, repr=False)
    _store: SessionStore | None = field(default=None, repr=False)

    @property
    def redis(self) -> Redis:
        """A client for ``settings.redis_url`` (idempotency keys, token streams)."""
        if self._redis is None:
            with self.lock:
                if self._redis is None:
                    self._redis = redis_client(self.settings)
        return self._redis

    @property
    def broker(self) -> Redis:
        """A client for ``settings.broker`` (the producer pushes runs' first messages on it)."""
        if self._broker is None:
            with self.lock:
                if self._broker is None:
                    self._broker = redis_client(self.settings, self.settings.broker)
        return self._broker

    @property
    def store(self) -> SessionStore:
        """The session store: the worker's, the one given (the API's), else one of the
        producer's own (it records accepted runs: ``durability.accepted = "sql"``)."""
        if self.runtime is not None:
            return self.runtime.store
        if self._store is None:
            with self.lock:
                if self._store is None:
                    from app.memory.sessions import SessionStore

                    self._store = SessionStore.from_url(
                        self.settings.database_url, migrate=self.settings.auto_migrate
                    )
        return self._store

    @store.setter
    def store(self, store: SessionStore) -> None:
        self._store = store


_contexts: weakref.WeakKeyDictionary[Celery, AgentqContext] = weakref.WeakKeyDictionary()


def attach(app: Celery, context: AgentqContext) -> AgentqContext:
    """Make ``context`` the one :func:`context_of` returns for ``app``."""
    _contexts[app] = context
    return context


def context_of(app: Celery) -> AgentqContext:
    """The context of ``app``; ConfigurationError for an app not built by ``create_celery``."""
    try:
        return _contexts[app]
    except KeyError:
        raise ConfigurationError(
            f"Celery app {app.main!r} has no agentq context: build it with "
            "app.celery_ext.app.create_celery"
        ) from None
