"""/openapi.json matches the API: every route is declared, and real responses (bodies, problem
bodies, each event's data) validate against the schemas it declares for them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from app.api.app import create_app
from app.celery_ext.app import create_celery
from app.config import Settings
from app.constants import DEFAULT_TENANT, stream_key
from app.memory.api_keys import SCOPES, ApiKeyStore
from app.memory.history import claim_session
from app.memory.records import NewRun, RunStatus, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.tasks.relay import TokenRelay
from tests.fixtures.parked import park_on_signal
from tests.fixtures.sse import events

RATE = {"rate_limit_per_s": 0.01, "rate_limit_burst": 100}
"""Far more than the test's calls with one key; a key that sends more is refused (429)."""


@pytest.fixture
def api(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    """A client of the API, sending a key with every scope."""
    database_url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    settings = Settings(_env_file=None, redis_url=redis_url, database_url=database_url, api=RATE)
    celery = create_celery(settings)
    with TestClient(create_app(settings, celery)) as client:
        client.headers["Authorization"] = f"Bearer {make_key(database_url, SCOPES)}"
        yield client
    celery.close()


def make_key(database_url: str, scopes: tuple[str, ...]) -> str:
    keys = ApiKeyStore.from_url(database_url, migrate=False)
    try:
        return keys.create(scopes)[1]
    finally:
        keys.close()


def _validate(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> None:
    """``value`` against ``schema``, whose $refs point into the document's components."""
    Draft202012Validator({**schema, "components": doc["components"]}).validate(value)


def test_every_route_is_declared_and_every_declared_path_served(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    routes = [c.original_route for c in iter_route_contexts(api.app.routes)]  # type: ignore[attr-defined]
    served = {
        (route.path, method.lower())
        for route in routes
        if isinstance(route, APIRoute) and route.include_in_schema
        for method in route.methods
    }
    declared = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == declared
    assert served == {
        ("/v1/runs", "post"),
        ("/v1/runs", "get"),
        ("/v1/runs/{run_id}", "get"),
        ("/v1/runs/{run_id}/events", "get"),
        ("/v1/runs/{run_id}/replay", "post"),
        ("/v1/runs/{run_id}/signals/{name}", "post"),
        ("/v1/runs/{run_id}/cancel", "post"),
        ("/v1/sessions/{session_id}", "get"),
        ("/v1/sessions/{session_id}", "delete"),
        ("/v1/tenant/export", "get"),
        ("/v1/tenant", "delete"),
    }
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["HTTPBearer"]["description"],
    }
    assert schemes["APIKeyCookie"]["name"] == "agentq_key"
    for path, method in served:
        assert {"HTTPBearer": []} in doc["paths"][path][method]["security"]
    post = doc["paths"]["/v1/runs"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RunCreate"
    }
    assert "Idempotency-Key" in [p["name"] for p in post["parameters"]]
    signal = doc["paths"]["/v1/runs/{run_id}/signals/{name}"]["post"]
    assert "data" in signal["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_real_responses_validate_against_their_declared_schemas(
    api: TestClient, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    doc = api.get("/openapi.json").json()
    database_url = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    store = SessionStore.from_url(database_url, migrate=False)
    step = StepRecord(0, StepKind.FINAL, "done", (), 5, 1, 2.0, "w@h")
    store.commit_step(
        "stored", step, final_answer={"ok": True}, new_run=NewRun("stored", "coder", "x")
    )
    for session_id in ("chat", "busy"):
        claim_session(store, NewRun(f"in-{session_id}", "coder", "x", session_id))
    store.commit_step("in-chat", step, final_answer="a", session_id="chat")
    park_on_signal(store, "parked")
    store.close()
    relay = TokenRelay(redis_client, Settings(_env_file=None).stream)
    relay.attempt(DEFAULT_TENANT, "streamed", 0)
    relay.token(DEFAULT_TENANT, "streamed", 0, "hi")
    relay.step(DEFAULT_TENANT, "streamed", 0, StepKind.TOOL, ["calculator"])
    relay.end(DEFAULT_TENANT, "streamed", RunStatus.FAILED, error="budget exceeded")

    accepted = api.post("/v1/runs", json={"agent": "research", "input": "q", "stream": True})
    queued = accepted.json()["id"]
    calls = [
        ("/v1/runs", "post", accepted),
        (
            "/v1/runs",
            "post",
            api.post("/v1/runs", json={"agent": "research", "input": "x" * 70_000}),
        ),
        ("/v1/runs", "post", api.post("/v1/runs", json={"agent": "nobody", "input": "q"})),
        ("/v1/runs", "post", api.post("/v1/runs", json={"agent": "research"})),
        ("/v1/runs/{run_id}", "get", api.get(f"/v1/runs/{queued}")),
        ("/v1/runs/{run_id}", "get", api.get("/v1/runs/stored")),
        ("/v1/runs/{run_id}", "get", api.get("/v1/runs/nothing")),
        ("/v1/runs/{run_id}/events", "get", api.get("/v1/runs/nothing/events")),
        ("/v1/runs", "get", api.get("/v1/runs", params={"limit": 1})),
        ("/v1/runs", "get", api.get("/v1/runs", params={"cursor": "nonsense"})),
        ("/v1/runs", "get", api.get("/v1/runs", params={"status": "lost"})),
        (
            "/v1/runs/{run_id}/events",
            "get",
            api.get("/v1/runs/streamed/events", headers={"Last-Event-ID": "step-0"}),
        ),
    ]
    signals = "/v1/runs/{run_id}/signals/{name}"
    calls += [
        (signals, "post", api.post("/v1/runs/parked/signals/approval", json={"data": 1})),
        (signals, "post", api.post("/v1/runs/parked/signals/approval", json={"data": 1})),
        (signals, "post", api.post("/v1/runs/stored/signals/approval", json={})),
        (signals, "post", api.post("/v1/runs/nothing/signals/approval", json={})),
        (signals, "post", api.post("/v1/runs/parked/signals/approval", content=b"[")),
        (
            signals,
            "post",
            api.post("/v1/runs/parked/signals/approval", json={"data": "x" * 70_000}),
        ),
        ("/v1/runs/{run_id}/cancel", "post", api.post("/v1/runs/parked/cancel")),
        ("/v1/runs/{run_id}/cancel", "post", api.post("/v1/runs/nothing/cancel")),
    ]
    calls += [
        ("/v1/sessions/{session_id}", "get", api.get("/v1/sessions/chat")),
        ("/v1/sessions/{session_id}", "get", api.get("/v1/sessions/nothing")),
        ("/v1/sessions/{session_id}", "delete", api.delete("/v1/sessions/busy")),
        ("/v1/sessions/{session_id}", "delete", api.delete("/v1/sessions/chat")),
        ("/v1/sessions/{session_id}", "delete", api.delete("/v1/sessions/chat")),
        ("/v1/tenant", "delete", api.delete("/v1/tenant")),
    ]
    read_only = {"Authorization": f"Bearer {make_key(database_url, ('read',))}"}
    calls += [
        ("/v1/runs", "post", api.post("/v1/runs", json={}, headers={"Authorization": ""})),
        ("/v1/runs", "post", api.post("/v1/runs", json={}, headers=read_only)),
    ]
    limited = {"Authorization": f"Bearer {make_key(database_url, ('read',))}"}
    for _ in range(RATE["rate_limit_burst"] + 1):
        over = api.get("/v1/runs/x", headers=limited)
    calls.append(("/v1/runs/{run_id}", "get", over))
    end_id = redis_client.xrevrange(stream_key(DEFAULT_TENANT, "streamed"), count=1)[0][0]
    end_id = end_id.decode()
    ended = api.get("/v1/runs/streamed/events", headers={"Last-Event-ID": end_id})
    assert ended.status_code == 204
    assert "204" in doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]
    seen = set()
    for path, method, response in calls:
        declared = doc["paths"][path][method]["responses"][str(response.status_code)]
        media_type = response.headers["content-type"].split(";")[0]
        _validate(doc, declared["content"][media_type]["schema"], response.json())
        seen.add(response.status_code)
    assert seen == {202, 413, 422, 200, 404, 400, 401, 403, 409, 429}

    stream = doc["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]["200"]["content"]
    kinds = stream["text/event-stream"]["x-events"]
    for run_id in ("streamed", "stored"):
        with api.stream("GET", f"/v1/runs/{run_id}/events") as response:
            got = list(events(response.iter_lines()))
        assert got and got[-1].event == "end"
        for event in got:
            _validate(doc, kinds[event.event], event.data)
