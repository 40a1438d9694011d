"""Signals and cancellation over HTTP, run views with their sub-agent runs and wait, events of a
parked run, and the inspector's sub-agent runs, on real Redis and a real store (SQLite and
PostgreSQL); runs parked by a committed step, as a worker parks them."""

from __future__ import annotations

from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.config import Settings
from app.constants import DEFAULT_TENANT, cancel_key
from app.errors import RunCancelledError
from app.memory.api_keys import ApiKeyStore
from app.memory.records import RunStatus
from app.memory.sessions import SessionStore
from app.producer import control
from app.tasks.relay import TokenRelay, encode
from tests.fixtures.api import api_client
from tests.fixtures.parked import (
    finish,
    park_on_children,
    park_on_signal,
    queued_steps,
    start_running,
    store_settings,
)
from tests.fixtures.sse import Event, events

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def api_settings(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> Iterator[Settings]:
    with store_settings(
        request,
        redis_url,
        tmp_path,
        orchestration={"signal_max_bytes": 64},
        api={"poll_interval_s": 0.05},
    ) as settings:
        yield settings


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with api_client(api_settings) as test_client:
        keys = ApiKeyStore.from_url(api_settings.database_url, migrate=False)
        test_client.headers["Authorization"] = f"Bearer {keys.create(['submit', 'read'])[1]}"
        keys.close()
        yield test_client


@pytest.fixture
def store(api_settings: Settings, client: TestClient) -> Iterator[SessionStore]:
    s = SessionStore.from_url(api_settings.database_url, migrate=False)
    yield s
    s.close()


def key(settings: Settings, scopes: list[str], tenant: str | None = None) -> dict[str, str]:
    keys = ApiKeyStore.from_url(settings.database_url, migrate=False)
    try:
        return {"Authorization": f"Bearer {keys.create(scopes, tenant)[1]}"}
    finally:
        keys.close()


def problem_type(response: Any) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    body = response.json()
    assert body["status"] == response.status_code
    return str(body["type"]).removeprefix("urn:agentq:problem:")


def status_of(store: SessionStore, run_id: str) -> RunStatus | None:
    run = store.load_run(run_id)
    return None if run is None else run.status


def test_a_signal_resumes_its_parked_run_once(
    client: TestClient, store: SessionStore, redis_client: redis.Redis
) -> None:
    park_on_signal(store, "parked")
    sent = client.post("/v1/runs/parked/signals/approval", json={"data": {"ok": True}})
    assert sent.status_code == 200, sent.text
    assert sent.json() == {"run_id": "parked", "name": "approval", "resumed": True}
    assert status_of(store, "parked") is RunStatus.RUNNING
    assert [task_id for task_id, _ in queued_steps(redis_client, "echo")] == ["parked:1"]
    [call] = store.load_run("parked").steps[0].tool_calls  # type: ignore[union-attr]
    assert call.result == {"signal": "approval", "data": {"ok": True}}
    again = client.post("/v1/runs/parked/signals/approval", json={"data": "late"})
    assert again.status_code == 200
    assert again.json()["resumed"] is False
    assert len(queued_steps(redis_client, "echo")) == 1


def test_each_signal_refusal_is_its_problem_and_resumes_nothing(
    client: TestClient, api_settings: Settings, store: SessionStore
) -> None:
    park_on_signal(store, "parked")
    finish(store, "done")
    url = "/v1/runs/parked/signals/approval"
    refusals = {
        "unknown": client.post("/v1/runs/nobody/signals/approval", json={}),
        "foreign": client.post(url, json={}, headers=key(api_settings, ["submit"], "acme")),
        "ended": client.post("/v1/runs/done/signals/approval", json={}),
        "other": client.post("/v1/runs/parked/signals/payment", json={}),
        "large": client.post(url, json={"data": "x" * 100}),
        "not json": client.post(url, content=b"{nope", headers={"Content-Type": "text/plain"}),
        "extra field": client.post(url, json={"data": 1, "more": 2}),
        "not an object": client.post(url, json=[1, 2]),
    }
    got = {what: (r.status_code, problem_type(r)) for what, r in refusals.items()}
    assert got == {
        "unknown": (404, "run-not-found"),
        "foreign": (404, "run-not-found"),
        "ended": (409, "run-ended"),
        "other": (409, "not-waiting"),
        "large": (413, "signal-too-large"),
        "not json": (400, "bad-request"),
        "extra field": (400, "bad-request"),
        "not an object": (400, "bad-request"),
    }
    read_only = client.post(url, json={}, headers=key(api_settings, ["read"]))
    assert read_only.status_code == 403
    assert status_of(store, "parked") is RunStatus.WAITING
    no_body = client.post(url)  # no body: the signal carries null
    assert no_body.status_code == 200 and no_body.json()["resumed"] is True


def test_cancel_ends_a_parked_or_queued_run_and_asks_a_running_one(
    client: TestClient, api_settings: Settings, store: SessionStore, redis_client: redis.Redis
) -> None:
    park_on_signal(store, "parked")
    start_running(store, "busy")
    finish(store, "done")
    queued = client.post("/v1/runs", json={"agent": "echo", "input": "later"}).json()["id"]
    answers = {
        run_id: client.post(f"/v1/runs/{run_id}/cancel")
        for run_id in ("parked", "busy", "done", queued)
    }
    assert {run_id: r.json() for run_id, r in answers.items()} == {
        "parked": {"run_id": "parked", "was": "waiting", "cancelled": True},
        "busy": {"run_id": "busy", "was": "running", "cancelled": True},
        "done": {"run_id": "done", "was": "succeeded", "cancelled": False},
        queued: {"run_id": queued, "was": "queued", "cancelled": True},
    }
    assert status_of(store, "parked") is RunStatus.CANCELLED
    assert status_of(store, queued) is RunStatus.CANCELLED  # its first message finds it ended
    assert status_of(store, "done") is RunStatus.SUCCEEDED
    busy = store.load_run("busy")
    assert busy is not None and busy.status is RunStatus.RUNNING
    assert busy.cancel_requested_at is not None and redis_client.exists(cancel_key("busy"))
    celery = client.app.state.api.celery  # type: ignore[attr-defined]
    for run_id in ("parked", queued):
        with pytest.raises(RunCancelledError):
            celery.AsyncResult(run_id).get(timeout=5)
    read = client.get("/v1/runs/parked").json()
    assert (read["status"], read["error_type"], read["waiting_for"]) == (
        "cancelled", "cancelled", None,
    )  # fmt: skip
    unknown = client.post("/v1/runs/nobody/cancel")
    assert (unknown.status_code, problem_type(unknown)) == (404, "run-not-found")
    foreign = client.post("/v1/runs/busy/cancel", headers=key(api_settings, ["submit"], "acme"))
    assert foreign.status_code == 404
    listed = client.get("/v1/runs", params={"status": "cancelled"}).json()["items"]
    assert {r["id"] for r in listed} == {"parked", queued}


def test_a_run_view_has_its_parent_children_tree_and_wait(
    client: TestClient, store: SessionStore
) -> None:
    park_on_children(store, "root", [("kid-a", "helper", "a"), ("kid-b", "scout", "b")])
    park_on_children(
        store, "kid-a", [("grandkid", "scout", "g")], agent="helper", lineage=["boss"],
        parent_id="root",
    )  # fmt: skip
    park_on_signal(store, "lone", name="go-ahead")
    root = client.get("/v1/runs/root").json()
    assert root["parent_id"] is None
    assert root["waiting_for"]["kind"] == "children"
    assert (root["waiting_for"]["pending"], root["waiting_for"]["step"]) == (2, 0)

    def shape(nodes: list[dict[str, Any]]) -> list[Any]:
        return [(n["id"], n["agent"], n["status"], shape(n["children"])) for n in nodes]

    assert shape(root["children"]) == [
        ("kid-a", "helper", "waiting", [("grandkid", "scout", "queued", [])]),
        ("kid-b", "scout", "queued", []),
    ]
    kid = client.get("/v1/runs/kid-a").json()
    assert kid["parent_id"] == "root"
    lone = client.get("/v1/runs/lone").json()
    assert lone["waiting_for"]["kind"] == "signal"
    assert lone["waiting_for"]["signal"] == "go-ahead"
    assert lone["children"] == []
    waiting = client.get("/v1/runs", params={"status": "waiting"}).json()["items"]
    assert {r["id"] for r in waiting} == {"root", "kid-a", "lone"}
    control.cancel("root", celery=client.app.state.api.celery)  # type: ignore[attr-defined]
    after = client.get("/v1/runs/root").json()
    assert shape(after["children"]) == [
        ("kid-a", "helper", "cancelled", [("grandkid", "scout", "cancelled", [])]),
        ("kid-b", "scout", "cancelled", []),
    ]


def test_a_parked_runs_events_stay_open_until_it_ends(
    client: TestClient, store: SessionStore
) -> None:
    park_on_signal(store, "parked")
    got: list[Event] = []
    with client.stream("GET", "/v1/runs/parked/events") as response:
        for event in events(response.iter_lines()):
            got.append(event)
            if event.event == "step":  # the run is parked now: the stream must not end here
                control.cancel("parked", celery=client.app.state.api.celery)  # type: ignore[attr-defined]
    assert [e.event for e in got] == ["step", "end"]
    assert got[-1].data == {"status": "cancelled", "error": "run cancelled by request"}


def test_event_kinds_the_api_does_not_know_pass_through_by_name(
    client: TestClient, api_settings: Settings, redis_client: redis.Redis
) -> None:
    relay = TokenRelay(redis_client, api_settings.stream)
    relay.attempt(DEFAULT_TENANT, "run-w", 0)
    relay._add(DEFAULT_TENANT, "run-w", encode("waiting", 0, data={"signal": "approval"}))
    relay._add(DEFAULT_TENANT, "run-w", encode("child", 0, "started", data=["kid-a"]))
    relay.end(DEFAULT_TENANT, "run-w", RunStatus.CANCELLED, error="run cancelled")
    with client.stream("GET", "/v1/runs/run-w/events") as response:
        got = list(events(response.iter_lines()))
    assert [(e.event, e.data) for e in got] == [
        ("attempt", {"step": 0}),
        ("waiting", {"step": 0, "signal": "approval"}),
        ("child", {"step": 0, "text": "started", "data": ["kid-a"]}),
        ("end", {"status": "cancelled", "error": "run cancelled"}),
    ]


def test_the_inspector_links_a_runs_parent_and_sub_agent_runs(
    client: TestClient, store: SessionStore
) -> None:
    park_on_children(store, "root", [("kid-a", "helper", "a"), ("kid-b", "scout", "b")])
    park_on_children(
        store, "kid-a", [("grandkid", "scout", "g")], agent="helper", lineage=["boss"],
        parent_id="root",
    )  # fmt: skip
    client.cookies.set("agentq_key", client.headers["Authorization"].removeprefix("Bearer "))
    root = unescape(client.get("/inspector/runs/root").text)
    for child in ("kid-a", "kid-b", "grandkid"):
        assert f'href="/inspector/runs/{child}"' in root
    assert 'id="parent"' not in root
    assert "2 sub-agent run(s) to end" in root
    kid = unescape(client.get("/inspector/runs/kid-a").text)
    assert 'id="parent" href="/inspector/runs/root"' in kid
    listing = client.get("/inspector").text
    for status in ("waiting", "cancelled"):
        assert f'<option value="{status}"' in listing
