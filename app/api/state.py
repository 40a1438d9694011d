"""What the API's routes share: settings, the Celery app they submit through, the session
store, its API keys and Redis clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from fastapi import Request
from redis import Redis

from app.celery_ext.context import context_of
from app.config import Settings
from app.memory.api_keys import ApiKeyStore
from app.memory.sessions import SessionStore


@dataclass(eq=False)
class ApiState:
    """One per app; routes reach it through :func:`api_state`."""

    settings: Settings
    celery: Celery
    store: SessionStore
    keys: ApiKeyStore
    aredis: Any = None  # redis.asyncio client, made in the app's event loop (lifespan)

    @property
    def redis(self) -> Redis:
        """The producer's Redis client (idempotency keys, token streams)."""
        return context_of(self.celery).redis

    @property
    def broker(self) -> Redis:
        """The producer's broker client (the queues and the queued-runs index)."""
        return context_of(self.celery).broker


def api_state(request: Request) -> ApiState:
    """The app's :class:`ApiState` (a FastAPI dependency)."""
    state: ApiState = request.app.state.api
    return state
