"""The run API on real Redis and SQLite: submit over HTTP (validation, idempotency, problems),
read runs from the store, and events from a run's real token stream, resumed by
Last-Event-ID."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.api import events as api_events
from app.api.app import create_app
from app.celery_ext.app import create_celery
from app.config import Settings
from app.constants import DEFAULT_TENANT, stream_key
from app.local.processes import free_port
from app.memory.records import CallRecord, NewRun, RunStatus, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.tasks.relay import TokenRelay
from tests.fixtures.api import api_client
from tests.fixtures.sse import Event, events

AGENTS = {
    "agents": [
        {
            "name": "guarded",
            "max_input_bytes": 64,
            "input_validators": [{"type": "blocked_patterns", "patterns": ["(?i)rm -rf"]}],
        }
    ]
}


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump(AGENTS))
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentq.sqlite3'}",
        agents_file=agents,
        api={"auth": "none"},  # keys: test_auth_api.py
        orchestration={"signal_max_bytes": 64},  # the body limit is the agent's (below)
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with api_client(api_settings) as test_client:
        yield test_client


@pytest.fixture
def store(api_settings: Settings, client: TestClient) -> Iterator[SessionStore]:
    s = SessionStore.from_url(api_settings.database_url, migrate=False)  # the app migrated it
    yield s
    s.close()


def problem_of(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code
    return body


def test_a_submitted_run_is_enqueued_and_reads_as_queued(
    client: TestClient, redis_client: redis.Redis
) -> None:
    response = client.post("/v1/runs", json={"agent": "guarded", "input": "hello"})
    assert response.status_code == 202
    run_id = response.json()["id"]
    assert response.json() == {
        "id": run_id,
        "status": "queued",
        "links": {"self": f"/v1/runs/{run_id}", "events": f"/v1/runs/{run_id}/events"},
    }
    assert response.headers["Location"] == f"/v1/runs/{run_id}"
    assert redis_client.llen("agent.guarded") == 1
    read = client.get(f"/v1/runs/{run_id}")
    assert read.status_code == 200
    assert read.json()["status"] == "queued"
    assert read.json()["agent"] == "guarded"
    assert read.json()["steps"] == []


def test_a_repeated_idempotency_key_returns_the_first_run(
    client: TestClient, redis_client: redis.Redis
) -> None:
    body = {"agent": "guarded", "input": "once", "budget": {"max_steps": 2}}
    first = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-7"})
    again = client.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-7"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert redis_client.llen("agent.guarded") == 1
    other = client.post(
        "/v1/runs", json={**body, "input": "twice"}, headers={"Idempotency-Key": "order-7"}
    )
    assert other.status_code == 422
    assert problem_of(other)["type"].endswith(":idempotency-conflict")


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"agent": "nobody", "input": "hi"}, 422, "unknown-agent"),
        ({"agent": "guarded", "input": "   "}, 422, "invalid-input"),
        ({"agent": "guarded", "input": None}, 422, "invalid-input"),
        ({"agent": "guarded", "input": "please rm -rf /"}, 422, "input-rejected"),
        ({"agent": "guarded", "input": "x" * 65}, 413, "input-too-large"),
        ({"agent": "guarded", "input": "hi", "budget": {"max_steps": -1}}, 422, "invalid-request"),
        ({"agent": "guarded", "input": "hi", "stream": "yes"}, 422, "invalid-request"),
        ({"agent": "guarded", "input": "hi", "run_id": "mine"}, 422, "invalid-request"),
        ({"input": "hi"}, 422, "invalid-request"),
    ],
)
def test_each_refusal_is_a_problem_with_its_status_and_nothing_is_enqueued(
    client: TestClient, redis_client: redis.Redis, body: dict[str, Any], status: int, kind: str
) -> None:
    response = client.post("/v1/runs", json=body)
    assert response.status_code == status
    problem = problem_of(response)
    assert problem["type"] == f"urn:agentq:problem:{kind}"
    assert problem["title"] and problem["detail"]
    assert redis_client.llen("agent.guarded") == 0


def test_a_body_far_over_every_input_limit_is_refused_unread(
    client: TestClient, redis_client: redis.Redis
) -> None:
    # The only agent takes 64 bytes of input, a signal 64 bytes of data: the API reads
    # 2 x 64 bytes + 64 KiB at most.
    huge = b'{"agent": "guarded", "input": "' + b"x" * 300_000 + b'"}'
    declared = client.post("/v1/runs", content=huge, headers={"content-type": "application/json"})
    assert declared.status_code == 413
    assert "the API reads at most 65664" in problem_of(declared)["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield huge[:100_000]
        yield huge[100_000:]

    chunked = client.post(
        "/v1/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert problem_of(chunked)["type"].endswith(":input-too-large")
    assert "request body is over" in problem_of(chunked)["detail"]
    assert redis_client.llen("agent.guarded") == 0


def test_a_body_that_is_not_json_is_a_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert problem_of(response)["type"].endswith(":invalid-request")


def test_a_broker_that_does_not_answer_is_503_with_retry_after(
    api_settings: Settings, tmp_path: Path
) -> None:
    down = api_settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{free_port()}/0",
            "redis_connect_timeout_s": 0.5,
        }
    )
    celery = create_celery(down)
    with TestClient(create_app(down, celery)) as down_client:
        response = down_client.post("/v1/runs", json={"agent": "guarded", "input": "hi"})
    celery.close()
    assert response.status_code == 503
    assert problem_of(response)["type"].endswith(":service-unavailable")
    assert response.headers["Retry-After"] == "1"


def test_a_session_store_that_does_not_answer_is_503(api_settings: Settings) -> None:
    down = api_settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
            "auto_migrate": False,
        }
    )
    with TestClient(create_app(down)) as down_client:
        response = down_client.get("/v1/runs/some-run")
    assert response.status_code == 503
    assert problem_of(response)["type"].endswith(":service-unavailable")


def test_an_unknown_run_is_a_404_problem(client: TestClient) -> None:
    for path in ("/v1/runs/no-such-run", "/v1/runs/no-such-run/events"):
        response = client.get(path)
        assert response.status_code == 404
        assert problem_of(response)["type"].endswith(":run-not-found")


def _commit_tool_run(store: SessionStore, run_id: str) -> None:
    """A finished run in the store: a calculator step, then the answer."""
    call = CallRecord("c1", "calculator", {"expression": "20+22"}, 42)
    tool_step = StepRecord(0, StepKind.TOOL, "<tool_call>...", (call,), 30, 12, 8.5, "w@h")
    assert store.commit_step(run_id, tool_step, new_run=NewRun(run_id, "guarded", "add"))
    final = StepRecord(1, StepKind.FINAL, "Answer: 42", (), 50, 3, 4.0, "w@h")
    assert store.commit_step(run_id, final, final_answer="Answer: 42")


def test_a_stored_run_reads_with_its_steps_tool_calls_and_answer(
    client: TestClient, store: SessionStore
) -> None:
    _commit_tool_run(store, "run-calc")
    run = client.get("/v1/runs/run-calc").json()
    assert (run["status"], run["answer"], run["error"]) == ("succeeded", "Answer: 42", None)
    assert [s["kind"] for s in run["steps"]] == ["tool", "final"]
    first = run["steps"][0]
    assert first["tool_calls"] == [
        {
            "id": "c1",
            "name": "calculator",
            "args": {"expression": "20+22"},
            "result": 42,
            "error": False,
        }
    ]
    assert (first["tokens_in"], first["tokens_out"], first["worker"]) == (30, 12, "w@h")


def test_a_run_without_a_stream_gets_its_steps_and_end_from_the_store(
    client: TestClient, store: SessionStore
) -> None:
    _commit_tool_run(store, "run-calc")
    got = _read_events(client, "run-calc")
    assert [(e.event, e.id) for e in got] == [
        ("step", "step-0"),
        ("step", "step-1"),
        ("end", "end"),
    ]
    assert got[0].data == {"index": 0, "kind": "tool", "tools": ["calculator"]}
    assert got[-1].data == {"status": "succeeded", "answer": "Answer: 42"}
    assert _read_events(client, "run-calc", "step-0") == got[1:]
    after_the_end = client.get("/v1/runs/run-calc/events", headers={"Last-Event-ID": "end"})
    assert after_the_end.status_code == 204  # an EventSource stops reconnecting


def _read_events(client: TestClient, run_id: str, last_event_id: str | None = None) -> list[Event]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(events(response.iter_lines()))


def _relay_run(relay: TokenRelay, run_id: str, words: list[str]) -> None:
    relay.attempt(DEFAULT_TENANT, run_id, 0)
    for word in words:
        relay.token(DEFAULT_TENANT, run_id, 0, word)
    relay.step(DEFAULT_TENANT, run_id, 0, StepKind.FINAL)
    relay.end(DEFAULT_TENANT, run_id, RunStatus.SUCCEEDED, answer="".join(words))


WORDS = ["w1", " w2", " w3", " w4", " w5"]


def test_events_come_from_the_real_stream_and_resume_after_last_event_id(
    client: TestClient, api_settings: Settings, redis_client: redis.Redis
) -> None:
    _relay_run(TokenRelay(redis_client, api_settings.stream), "run-s", WORDS)
    got = _read_events(client, "run-s")
    assert [e.event for e in got] == ["attempt", *["token"] * 5, "step", "end"]
    assert "".join(e.data["text"] for e in got if e.event == "token") == "w1 w2 w3 w4 w5"
    assert got[-1].data == {"status": "succeeded", "answer": "w1 w2 w3 w4 w5"}
    entries = [
        entry_id.decode()
        for entry_id, _ in redis_client.xrange(stream_key(DEFAULT_TENANT, "run-s"))
    ]
    assert [e.id for e in got] == entries  # each event's id is its stream entry's
    for cut in (1, 3, 7):  # after the attempt, mid-tokens, after the step
        assert _read_events(client, "run-s", got[cut - 1].id) == got[cut:]
    after_the_end = client.get("/v1/runs/run-s/events", headers={"Last-Event-ID": got[-1].id})
    assert after_the_end.status_code == 204  # an EventSource stops reconnecting


def test_a_listener_gets_tokens_as_they_are_written(
    client: TestClient, api_settings: Settings, redis_client: redis.Redis
) -> None:
    relay = TokenRelay(redis_client, api_settings.stream)
    relay.attempt(DEFAULT_TENANT, "run-live", 0)
    first_seen = threading.Event()

    def write_the_rest() -> None:
        relay.token(DEFAULT_TENANT, "run-live", 0, WORDS[0])
        first_seen.wait(timeout=30)  # the reader holds the first token: the run is not over
        for word in WORDS[1:]:
            relay.token(DEFAULT_TENANT, "run-live", 0, word)
        relay.end(DEFAULT_TENANT, "run-live", RunStatus.SUCCEEDED, answer="".join(WORDS))

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    got: list[Event] = []
    with client.stream("GET", "/v1/runs/run-live/events") as response:
        for event in events(response.iter_lines()):
            got.append(event)
            if event.event == "token":
                first_seen.set()
    writer.join(timeout=30)
    assert [e.data["text"] for e in got if e.event == "token"] == WORDS
    assert got[-1].event == "end"


def test_a_stream_without_its_end_ends_from_the_store(
    client: TestClient,
    api_settings: Settings,
    redis_client: redis.Redis,
    store: SessionStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_events, "STORE_CHECK_MS", 100)
    relay = TokenRelay(redis_client, api_settings.stream)
    relay.attempt(
        DEFAULT_TENANT, "run-calc", 0
    )  # the worker's end write was lost; the store has the run
    _commit_tool_run(store, "run-calc")
    got = _read_events(client, "run-calc")
    assert [(e.event, e.id) for e in got][1:] == [("end", "end")]
    assert got[-1].data == {"status": "succeeded", "answer": "Answer: 42"}
    after_the_end = client.get("/v1/runs/run-calc/events", headers={"Last-Event-ID": "end"})
    assert after_the_end.status_code == 204


def test_a_last_event_id_of_another_kind_is_a_400_problem(
    client: TestClient, api_settings: Settings, redis_client: redis.Redis
) -> None:
    _relay_run(TokenRelay(redis_client, api_settings.stream), "run-s", WORDS)
    response = client.get("/v1/runs/run-s/events", headers={"Last-Event-ID": "step-1"})
    assert response.status_code == 400
    assert problem_of(response)["type"].endswith(":bad-request")
