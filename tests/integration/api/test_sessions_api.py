"""``GET`` and ``DELETE /v1/sessions/{id}`` on real Redis and SQLite, keys on: a read key reads,
only an operate key deletes, a session with a running run is kept unless forced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.config import Settings
from app.constants import DEFAULT_TENANT, history_keys, stream_key
from app.memory.api_keys import ApiKeyStore
from app.memory.history import claim_session
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from tests.fixtures.api import api_client

pytestmark = pytest.mark.integration


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 's.sqlite3'}"
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with api_client(api_settings) as test_client:
        yield test_client


@pytest.fixture
def keys(api_settings: Settings, client: TestClient) -> Iterator[dict[str, dict[str, str]]]:
    store = ApiKeyStore.from_url(api_settings.database_url, migrate=False)
    made = {
        scope: {"Authorization": f"Bearer {store.create((scope,), None, scope)[1]}"}
        for scope in ("read", "operate")
    }
    yield made
    store.close()


@pytest.fixture
def store(api_settings: Settings, client: TestClient) -> Iterator[SessionStore]:
    s = SessionStore.from_url(api_settings.database_url, migrate=False)
    for run_id, session_id in (("done", "chat"), ("live", "busy")):
        assert claim_session(s, NewRun(run_id, "coder", "hi", session_id)).held_by(run_id)
    final = StepRecord(0, StepKind.FINAL, "hello")
    assert s.commit_step("done", final, final_answer="hello", session_id="chat")
    yield s
    s.close()


def test_a_read_key_reads_a_session(
    client: TestClient, keys: dict[str, dict[str, str]], store: SessionStore
) -> None:
    chat = client.get("/v1/sessions/chat", headers=keys["read"])
    assert chat.status_code == 200
    body = chat.json()
    assert (body["id"], body["runs"], body["active_run"], body["history_version"]) == (
        "chat", {"succeeded": 1}, None, 1,
    )  # fmt: skip
    assert body["runs_url"] == "/v1/runs?session_id=chat"
    listed = client.get(body["runs_url"], headers=keys["read"]).json()
    assert [r["id"] for r in listed["items"]] == ["done"]
    assert client.get("/v1/sessions/busy", headers=keys["read"]).json()["active_run"] == "live"
    missing = client.get("/v1/sessions/nope", headers=keys["read"])
    assert missing.status_code == 404 and missing.json()["type"].endswith(":session-not-found")


def test_only_an_operate_key_deletes_and_a_running_session_needs_force(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    store: SessionStore,
    redis_client: redis.Redis,
) -> None:
    redis_client.xadd(stream_key(DEFAULT_TENANT, "done"), {"event": "end"})
    redis_client.set(history_keys("chat")[0], 1)
    assert client.delete("/v1/sessions/chat", headers=keys["read"]).status_code == 403
    deleted = client.delete("/v1/sessions/chat", headers=keys["operate"])
    assert deleted.status_code == 200
    assert deleted.json() == {"id": "chat", "runs": 1, "steps": 1, "redis_keys": 2}
    assert store.load_run("done") is None
    assert not redis_client.exists(stream_key(DEFAULT_TENANT, "done"), *history_keys("chat"))
    assert client.get("/v1/sessions/chat", headers=keys["read"]).status_code == 404
    busy = client.delete("/v1/sessions/busy", headers=keys["operate"])
    assert busy.status_code == 409 and "running run(s) (live" in busy.json()["detail"]
    assert store.load_run("live") is not None
    forced = client.delete("/v1/sessions/busy", params={"force": True}, headers=keys["operate"])
    assert forced.status_code == 200 and forced.json()["runs"] == 1
    assert store.load_run("live") is None
