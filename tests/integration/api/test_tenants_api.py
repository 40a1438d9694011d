"""Tenants over HTTP on real Redis and SQLite: an API key acts for its tenant; every read path
(a run, its events, the listing, a session, the inspector) and every write on an existing
resource (delete, replay) answers another tenant's as if it did not exist (404), and a run
submitted with a key is its tenant's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.config import Settings
from app.constants import stream_key
from app.memory.api_keys import ApiKeyStore
from app.memory.history import claim_session
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.tasks.relay import TokenRelay
from tests.fixtures.api import api_client

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text("agents:\n  - name: coder\n    backend: echo\n")
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 's.sqlite3'}",
        agents_file=agents,
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with api_client(api_settings) as test_client:
        yield test_client


@pytest.fixture
def keys(api_settings: Settings, client: TestClient) -> Iterator[dict[str, dict[str, str]]]:
    """One key per tenant with every scope."""
    store = ApiKeyStore.from_url(api_settings.database_url, migrate=False)
    made = {
        tenant: {
            "Authorization": f"Bearer {store.create(('submit', 'read', 'operate'), tenant)[1]}"
        }
        for tenant in TENANTS
    }
    yield made
    store.close()


@pytest.fixture
def store(
    api_settings: Settings, client: TestClient, redis_client: redis.Redis
) -> Iterator[SessionStore]:
    """Per tenant: a session ``<tenant>-chat`` whose run ``<tenant>-run`` succeeded, with a
    token stream kept."""
    s = SessionStore.from_url(api_settings.database_url, migrate=False)
    relay = TokenRelay(redis_client, api_settings.stream)
    for tenant in TENANTS:
        run_id, session_id = f"{tenant}-run", f"{tenant}-chat"
        run = NewRun(run_id, "coder", "hi", session_id, tenant=tenant)
        assert claim_session(s, run).held_by(run_id)
        final = StepRecord(0, StepKind.FINAL, f"secret of {tenant}")
        assert s.commit_step(run_id, final, final_answer=final.model_output, session_id=session_id)
        relay.token(tenant, run_id, 0, f"secret of {tenant}")
        relay.end(tenant, run_id, "succeeded", answer=f"secret of {tenant}")
    yield s
    s.close()


def test_each_tenant_reads_its_own_runs_and_sessions(
    client: TestClient, keys: dict[str, dict[str, str]], store: SessionStore
) -> None:
    for tenant in TENANTS:
        run = client.get(f"/v1/runs/{tenant}-run", headers=keys[tenant])
        assert run.status_code == 200 and run.json()["answer"] == f"secret of {tenant}"
        session = client.get(f"/v1/sessions/{tenant}-chat", headers=keys[tenant])
        assert session.status_code == 200 and session.json()["tenant"] == tenant
        listed = client.get("/v1/runs", headers=keys[tenant]).json()["items"]
        assert [r["id"] for r in listed] == [f"{tenant}-run"]
        events = client.get(f"/v1/runs/{tenant}-run/events", headers=keys[tenant])
        assert events.status_code == 200 and f"secret of {tenant}" in events.text


def test_another_tenants_run_and_session_are_not_found_on_every_path(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    store: SessionStore,
    redis_client: redis.Redis,
) -> None:
    globex = keys["globex"]
    reads = {
        "/v1/runs/acme-run": "run-not-found",
        "/v1/runs/acme-run/events": "run-not-found",
        "/v1/sessions/acme-chat": "session-not-found",
    }
    for path, kind in reads.items():
        got = client.get(path, headers=globex)
        assert got.status_code == 404, path
        assert got.json()["type"].endswith(f":{kind}")
        assert "secret of acme" not in got.text
    assert client.get("/v1/runs?session_id=acme-chat", headers=globex).json()["items"] == []
    deleted = client.delete("/v1/sessions/acme-chat", headers=globex)
    assert deleted.status_code == 404
    replayed = client.post("/v1/runs/acme-run/replay", headers=globex)
    assert replayed.status_code == 404 and replayed.json()["type"].endswith(":run-not-found")
    page = client.get("/runs/acme-run", headers=globex)
    assert page.status_code == 404 and "secret of acme" not in page.text
    # Nothing of acme's was touched.
    assert store.load_run("acme-run") is not None
    assert redis_client.exists(stream_key("acme", "acme-run"))
    assert client.get("/v1/sessions/acme-chat", headers=keys["acme"]).status_code == 200


def test_a_run_submitted_with_a_key_is_its_tenants_from_the_queue_on(
    client: TestClient, keys: dict[str, dict[str, str]], store: SessionStore
) -> None:
    accepted = client.post("/v1/runs", json={"agent": "coder", "input": "hi"}, headers=keys["acme"])
    assert accepted.status_code == 202
    run_id = accepted.json()["id"]
    queued = client.get(f"/v1/runs/{run_id}", headers=keys["acme"])
    assert queued.status_code == 200 and queued.json()["status"] == "queued"
    assert client.get(f"/v1/runs/{run_id}", headers=keys["globex"]).status_code == 404
    acme_ids = [r["id"] for r in client.get("/v1/runs", headers=keys["acme"]).json()["items"]]
    globex_ids = [r["id"] for r in client.get("/v1/runs", headers=keys["globex"]).json()["items"]]
    assert run_id in acme_ids and run_id not in globex_ids


def test_a_key_exports_and_deletes_its_own_tenant_only(
    client: TestClient,
    keys: dict[str, dict[str, str]],
    store: SessionStore,
    redis_client: redis.Redis,
) -> None:
    exported = client.get("/v1/tenant/export", headers=keys["acme"])
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in exported.text.splitlines()]
    assert [line["session"]["id"] for line in lines if "session" in line] == ["acme-chat"]
    assert [line["run"]["id"] for line in lines if "run" in line] == ["acme-run"]
    assert "globex" not in exported.text
    deleted = client.delete("/v1/tenant", headers=keys["acme"])
    assert deleted.status_code == 200
    assert (deleted.json()["tenant"], deleted.json()["runs"], deleted.json()["sessions"]) == (
        "acme", 1, 1,
    )  # fmt: skip
    assert store.load_run("acme-run") is None
    assert not redis_client.exists(stream_key("acme", "acme-run"))
    assert client.get("/v1/runs/globex-run", headers=keys["globex"]).status_code == 200
