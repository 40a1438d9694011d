"""API keys, scopes, the per-key rate limit and CORS on real Redis and SQLite: missing, wrong,
revoked and under-scoped keys are refused with problems; a valid key submits and reads a run;
the rate limit holds across two API instances sharing Redis; CORS headers only when set."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.celery_ext.app import create_celery
from app.config import Settings
from app.memory.api_keys import ApiKeyStore

ORIGIN = "https://app.example"


@pytest.fixture
def base_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'q.sqlite3'}"
    )


@contextmanager
def serve(settings: Settings, **api: Any) -> Iterator[TestClient]:
    """A client of an API instance on ``settings`` with ``api`` settings over them."""
    settings = settings.model_copy(update={"api": settings.api.model_copy(update=api)})
    celery = create_celery(settings)
    try:
        with TestClient(create_app(settings, celery)) as client:
            yield client
    finally:
        celery.close()


@pytest.fixture
def client(base_settings: Settings) -> Iterator[TestClient]:
    with serve(base_settings, key_cache_s=0) as test_client:  # a revocation counts at once
        yield test_client


@pytest.fixture
def keys(base_settings: Settings, client: TestClient) -> Iterator[ApiKeyStore]:
    store = ApiKeyStore.from_url(base_settings.database_url, migrate=False)  # the app migrated
    yield store
    store.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problem_of(response: Any, kind: str) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    assert body["type"] == f"urn:agentq:problem:{kind}"
    assert body["title"] and body["detail"]
    return body


ROUTES = [("post", "/v1/runs"), ("get", "/v1/runs/r1"), ("get", "/v1/runs/r1/events")]
RUN = {"agent": "research", "input": "hello"}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_a_request_without_a_key_is_a_401_problem_asking_for_a_bearer_key(
    client: TestClient, redis_client: redis.Redis, method: str, path: str
) -> None:
    response = client.request(method, path, json=RUN if method == "post" else None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in problem_of(response, "unauthenticated")["detail"]
    assert redis_client.llen("agent.research") == 0


def test_a_wrong_key_is_a_401_problem(client: TestClient, keys: ApiKeyStore) -> None:
    made, key = keys.create(["submit", "read"])
    secret = key.removeprefix(f"aq_{made.id}_")
    for wrong in (key + "x", f"aq_nobody_{secret}", secret, "not a key"):
        response = client.post("/v1/runs", json=RUN, headers=bearer(wrong))
        assert response.status_code == 401, wrong
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "unknown API key" in problem_of(response, "unauthenticated")["detail"]
    basic = client.get("/v1/runs/r1", headers={"Authorization": f"Basic {key}"})
    assert basic.status_code == 401


def test_a_revoked_key_is_a_401_problem_saying_so(client: TestClient, keys: ApiKeyStore) -> None:
    made, key = keys.create(["read"])
    assert client.get("/v1/runs/r1", headers=bearer(key)).status_code == 404
    keys.revoke(made.id)
    response = client.get("/v1/runs/r1", headers=bearer(key))
    assert response.status_code == 401
    assert f"API key {made.id} was revoked" in problem_of(response, "unauthenticated")["detail"]


def test_a_key_without_the_routes_scope_is_a_403_problem(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    _, reader = keys.create(["read"])
    _, submitter = keys.create(["submit"])
    refused = client.post("/v1/runs", json=RUN, headers=bearer(reader))
    assert refused.status_code == 403
    assert "lacks scope 'submit'" in problem_of(refused, "forbidden")["detail"]
    assert redis_client.llen("agent.research") == 0
    for path in ("/v1/runs/r1", "/v1/runs/r1/events"):
        response = client.get(path, headers=bearer(submitter))
        assert response.status_code == 403
        assert "lacks scope 'read'" in problem_of(response, "forbidden")["detail"]


def test_a_valid_key_submits_and_reads_a_run_by_header_or_cookie(
    client: TestClient, keys: ApiKeyStore, redis_client: redis.Redis
) -> None:
    _, key = keys.create(["submit", "read"])
    accepted = client.post("/v1/runs", json=RUN, headers=bearer(key))
    assert accepted.status_code == 202
    assert redis_client.llen("agent.research") == 1
    run = accepted.json()["links"]["self"]
    assert client.get(run, headers=bearer(key)).json()["status"] == "queued"
    client.cookies.set("agentq_key", key)
    assert client.get(run).json()["status"] == "queued"


def test_the_rate_limit_holds_across_api_instances_sharing_redis(
    base_settings: Settings,
) -> None:
    limited = {"rate_limit_per_s": 0.25, "rate_limit_burst": 2}  # one per 4 s after two
    with serve(base_settings, **limited) as first, serve(base_settings, **limited) as second:
        store = ApiKeyStore.from_url(base_settings.database_url, migrate=False)
        _, key = store.create(["read"])
        _, other = store.create(["read"])
        store.close()
        assert first.get("/v1/runs/r1", headers=bearer(key)).status_code == 404
        assert second.get("/v1/runs/r1", headers=bearer(key)).status_code == 404
        over = first.get("/v1/runs/r1", headers=bearer(key))
        assert over.status_code == 429
        assert "over its limit" in problem_of(over, "rate-limited")["detail"]
        wait_s = int(over.headers["Retry-After"])
        assert wait_s >= 1
        assert second.get("/v1/runs/r1", headers=bearer(key)).status_code == 429
        assert second.get("/v1/runs/r1", headers=bearer(other)).status_code == 404  # its own
        time.sleep(wait_s)
        assert second.get("/v1/runs/r1", headers=bearer(key)).status_code == 404


def test_without_keys_every_caller_may_do_everything_unlimited(
    base_settings: Settings,
) -> None:
    with serve(base_settings, auth="none", rate_limit_per_s=1.0, rate_limit_burst=1) as client:
        assert client.post("/v1/runs", json=RUN).status_code == 202
        assert [client.get("/v1/runs/r1").status_code for _ in range(3)] == [404] * 3


def test_cors_headers_only_for_the_configured_origins(
    client: TestClient, base_settings: Settings
) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,last-event-id",
    }
    off = client.options("/v1/runs", headers=preflight)
    assert "access-control-allow-origin" not in off.headers
    assert (
        "access-control-allow-origin"
        not in client.get("/healthz", headers={"Origin": ORIGIN}).headers
    )

    with serve(base_settings, cors_origins=[ORIGIN]) as cors:
        allowed = cors.options("/v1/runs", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        asked = {
            h.strip().lower() for h in allowed.headers["access-control-allow-headers"].split(",")
        }
        assert {"authorization", "content-type", "last-event-id"} <= asked
        refused = cors.get("/v1/runs/r1", headers={"Origin": ORIGIN})
        assert refused.status_code == 401  # a key is still needed; the page may read why
        assert refused.headers["access-control-allow-origin"] == ORIGIN
        exposed = refused.headers["access-control-expose-headers"]
        assert "Location" in exposed and "Idempotent-Replayed" in exposed
        other = cors.options("/v1/runs", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
