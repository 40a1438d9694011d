"""What the API's routes share: settings, the Celery app they submit through, the session
store, its API keys and Redis clients, and the record of runs the API accepted."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from fastapi import Request

from app.celery_ext.context import context_of
from app.config import Settings
from app.constants import accepted_key
from app.memory.api_keys import ApiKeyStore
from app.memory.sessions import SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A run this API accepted: what GET says of it before its first step is stored."""

    agent: str
    session_id: str | None
    stream: bool

    def to_json(self) -> str:
        """The record as Redis keeps it."""
        return json.dumps(
            {"agent": self.agent, "session_id": self.session_id, "stream": self.stream}
        )

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Accepted | None:
        """The record as :meth:`to_json` wrote it (None when there is none)."""
        if raw is None:
            return None
        data = json.loads(raw)
        return cls(data["agent"], data.get("session_id"), bool(data.get("stream")))


@dataclass(eq=False)
class ApiState:
    """One per app; routes reach it through :func:`api_state`."""

    settings: Settings
    celery: Celery
    store: SessionStore
    keys: ApiKeyStore
    aredis: Any = None  # redis.asyncio client, made in the app's event loop (lifespan)

    @property
    def redis(self) -> redis.Redis:
        """The producer's Redis client (idempotency keys, token streams)."""
        return context_of(self.celery).redis

    def remember(self, run_id: str, accepted: Accepted) -> None:
        """Keep that ``run_id`` was accepted, for ``api.accepted_ttl_s``. Best effort: the run
        is enqueued already, so a failed write is logged and the request succeeds."""
        key, ttl = accepted_key(run_id), self.settings.api.accepted_ttl_s
        try:
            self.redis.set(key, accepted.to_json(), nx=True, ex=ttl)
        except redis.RedisError as exc:
            log.warning(
                "run %s accepted but not recorded (GET says 404 until it runs): %s", run_id, exc
            )

    def accepted(self, run_id: str) -> Accepted | None:
        """The record of ``run_id`` if this API accepted it recently."""
        return Accepted.from_json(self.redis.get(accepted_key(run_id)))

    async def aaccepted(self, run_id: str) -> Accepted | None:
        """:meth:`accepted` on the async client."""
        return Accepted.from_json(await self.aredis.get(accepted_key(run_id)))


def api_state(request: Request) -> ApiState:
    """The app's :class:`ApiState` (a FastAPI dependency)."""
    state: ApiState = request.app.state.api
    return state
