"""Shared fixtures: real Redis (own database index, cleaned), SQLite per test, real Triton.

A service that is not running is started embedded (Redis) or, locally, skipped with the
reason (PostgreSQL); with CI set, a missing service fails the run instead of hiding tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.agents.sandbox import ToolSandbox
from app.config import Settings, TritonSettings
from app.local.redis import RedisServer
from tests.fixtures.services import service_missing  # noqa: F401

TEST_REDIS_DB = 13

pytest_plugins = [
    "tests.fixtures.triton",
    "tests.fixtures.postgres",
    "tests.fixtures.pgvector",
    "tests.fixtures.secure_redis",
    "tests.fixtures.sentinel",
    "tests.fixtures.llama_server",
    "tests.fixtures.llm",
    "tests.fixtures.retention",
    "tests.fixtures.embedding",
]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on its own database index, else an embedded one on a free port."""
    url = os.environ.get("AGENTQ_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{TEST_REDIS_DB}")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        with RedisServer() as server:
            yield server.url
        return
    yield url


@pytest.fixture(autouse=True)
def _tool_processes_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every tool sandbox a test builds (each StepRunner makes one) stops its tool processes
    when the test ends."""
    made: list[ToolSandbox] = []
    build = ToolSandbox.from_settings.__func__  # type: ignore[attr-defined]

    def recorded(cls: type[ToolSandbox], settings: Settings) -> ToolSandbox:
        made.append(build(cls, settings))
        return made[-1]

    monkeypatch.setattr(ToolSandbox, "from_settings", classmethod(recorded))
    yield
    for sandbox in made:
        sandbox.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test database, emptied before and after each test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'agentq.sqlite3'}"


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, sqlite_url: str, triton_server) -> Settings:
    """Settings pointing at the test Redis, a fresh SQLite file and the session's Triton."""
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=sqlite_url,
        triton=TritonSettings(urls=[triton_server.grpc_url]),
    )


@pytest.fixture
def celery_app(settings: Settings):
    """The agentq Celery app for ``settings`` (producer side)."""
    from app.celery_ext.app import create_celery

    app = create_celery(settings)
    yield app
    app.close()


@pytest.fixture
def start_worker(settings: Settings, celery_app, tmp_path: Path):
    """Factory: start real ``agentq worker`` processes; every one is stopped by PID afterwards."""
    from app.local.workers import WorkerProcess

    started: list[WorkerProcess] = []

    def start(
        agents: list[str],
        env: dict[str, str] | None = None,
        *,
        settings: Settings = settings,
        celery: Any = None,
        **kwargs: Any,
    ) -> WorkerProcess:
        """``settings`` and ``celery``: a test's own (default: the fixtures')."""
        worker = WorkerProcess(settings, agents, extra_env=env, log_dir=tmp_path, **kwargs)
        started.append(worker)
        return worker.start(celery or celery_app)

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def store(settings: Settings):
    """The session store of ``settings`` (migrated SQLite)."""
    from app.memory.sessions import SessionStore

    s = SessionStore.from_url(settings.database_url, migrate=True)
    yield s
    s.close()
