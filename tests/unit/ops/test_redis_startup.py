"""A starting worker's Redis check: what it waits through, and what fails at once."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.config import Settings
from app.errors import ConfigurationError
from app.ops import redis_clients as rc

LOADING = redis.BusyLoadingError("Redis is loading the dataset in memory")


class _Redis:
    """Answers ``ping`` with each of ``replies`` in turn (an exception is raised); keeps its
    data (noeviction, AOF on)."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies, self.pings = replies, 0

    def ping(self) -> bool:
        reply = self.replies[min(self.pings, len(self.replies) - 1)]
        self.pings += 1
        if isinstance(reply, Exception):
            raise reply
        return bool(reply)

    def info(self, section: str) -> dict[str, Any]:
        return {"maxmemory_policy": "noeviction", "aof_enabled": 1}

    def config_get(self, name: str) -> dict[str, str]:
        return {"save": ""}

    def close(self) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> _Redis:
    fake = _Redis([LOADING, LOADING, True])
    monkeypatch.setattr(rc, "redis_client", lambda *args, **kwargs: fake)
    monkeypatch.setattr(rc.time, "sleep", lambda s: None)
    return fake


def test_a_redis_still_loading_its_data_is_waited_for(server: _Redis) -> None:
    rc.check_redis(Settings(_env_file=None, redis_startup_wait_s=30))  # no error
    assert server.pings == 3  # asked again until the PONG


def test_a_redis_loading_past_the_wait_is_reported(server: _Redis) -> None:
    server.replies = [LOADING]
    with pytest.raises(ConfigurationError, match="loading the dataset"):
        rc.check_redis(Settings(_env_file=None, redis_startup_wait_s=0))


def test_a_wrong_password_fails_at_once_without_waiting(server: _Redis) -> None:
    server.replies = [redis.AuthenticationError("invalid password")]
    with pytest.raises(ConfigurationError, match=r"AUTH failed|requires a password"):
        rc.check_redis(Settings(_env_file=None, redis_startup_wait_s=30))
    assert server.pings == 1
