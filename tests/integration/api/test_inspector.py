"""The run inspector's pages and the replay route on real Redis and SQLite, keys on: who may see
and do what, the login cookie, cross-site form posts refused, a dead letter replayed over HTTP.
(The pages in a browser, with a worker and Triton: tests/e2e/test_inspector.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.config import Settings
from app.memory.api_keys import ApiKeyStore
from app.memory.records import CallRecord, NewRun, StepDraft, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.tasks import dead_letters as dlq
from tests.fixtures.api import api_client

HERE = "http://testserver"  # the TestClient's origin


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'a.sqlite3'}"
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


@pytest.fixture
def key_of(api_settings: Settings, client: TestClient) -> Iterator[Any]:
    """Factory: a new key with the given scopes."""
    keys = ApiKeyStore.from_url(api_settings.database_url, migrate=False)

    def make(*scopes: str) -> str:
        return keys.create(scopes, None, "test")[1]

    yield make
    keys.close()


def login(client: TestClient, key: str) -> Any:
    return client.post(
        "/inspector/login", data={"key": key}, headers={"Origin": HERE}, follow_redirects=False
    )


def dead_lettered_run(store: SessionStore, client: TestClient, run_id: str) -> None:
    """A run whose step 0 exhausted its retries, dead-lettered as the worker does it."""
    letter = dlq.DeadLetter(
        run_id=run_id,
        agent="research",
        step=0,
        kind=dlq.DeadLetterKind.RETRIES_EXHAUSTED,
        reason="still failing after 2 retries: NoReplicaAvailableError: no replica",
        retries=2,
        kwargs={"agent": "research", "input": "hi"},
        task_id=run_id,
        failed_at=time.time(),
        traceback="Traceback (most recent call last):\nNoReplicaAvailableError: no replica\n",
    )
    api_state = client.app.state.api  # type: ignore[attr-defined]
    dlq.dead_letter(api_state.redis, store, letter, "hi")


def test_pages_send_a_caller_without_key_to_the_login_page_which_refuses_a_wrong_key(
    client: TestClient, key_of: Any
) -> None:
    page = client.get("/inspector/runs/r1", follow_redirects=False)
    assert (page.status_code, page.headers["location"]) == (303, "/inspector/login")
    refused = login(client, "aq_nosuch_0123456789")
    assert refused.status_code == 401 and "unknown API key" in refused.text
    assert "set-cookie" not in refused.headers
    submit_only = login(client, key_of("submit"))
    assert submit_only.status_code == 403 and "lacks scope 'read'" in unescape(submit_only.text)


def test_the_login_keeps_the_key_in_an_httponly_strict_cookie_until_logout(
    client: TestClient, key_of: Any
) -> None:
    key = key_of("read")
    accepted = login(client, key)
    assert (accepted.status_code, accepted.headers["location"]) == (303, "/inspector")
    cookie = accepted.headers["set-cookie"]
    assert cookie.startswith(f"agentq_key={key};")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https sets it
    assert client.get("/inspector").status_code == 200
    # The run API takes the same cookie (the live tokens' EventSource sends it).
    assert client.get("/v1/runs/nosuch").status_code == 404
    out = client.post("/inspector/logout", headers={"Origin": HERE}, follow_redirects=False)
    assert out.status_code == 303 and 'agentq_key=""' in out.headers["set-cookie"]


def test_a_run_page_shows_steps_with_replica_and_a_failed_runs_traceback(
    client: TestClient, store: SessionStore, key_of: Any
) -> None:
    call = CallRecord("c0", "calculator", {"expression": "<b>2+3</b>"}, {"error": "bad"}, True)
    step = StepRecord(0, StepKind.TOOL, "asks", (call,), 12, 3, 8.0, "w@h", replica="grpc-a:8001")
    store.commit_step("r1", step, new_run=NewRun("r1", "research", "add"))
    store.fail_run("r1", "model call failed: boom", traceback="Traceback ...\nModelError: boom\n")
    login(client, key_of("read"))
    page = client.get("/inspector/runs/r1")
    assert page.status_code == 200
    text = page.text
    assert "replica <code>grpc-a:8001</code>" in text and "worker <code>w@h</code>" in text
    assert "&lt;b&gt;2+3&lt;/b&gt;" in text and "<b>2+3</b>" not in text  # escaped
    assert 'class="call call-error"' in text
    assert "Traceback ...\nModelError: boom" in text and "model call failed: boom" in text
    listed = client.get("/inspector", params={"agent": "research", "status": "failed"})
    assert 'data-run="r1"' in listed.text
    assert 'data-run="r1"' not in client.get("/inspector", params={"status": "running"}).text
    assert client.get("/inspector/runs/nosuch").status_code == 404


def test_a_step_under_way_shows_its_calls_with_the_results_kept_so_far(
    client: TestClient, store: SessionStore, key_of: Any
) -> None:
    store.commit_step(
        "r1", StepRecord(0, StepKind.FINAL, "x"), new_run=NewRun("r1", "research", "q")
    )
    calls = (
        {"id": "a", "name": "calculator", "args": {"expression": "1+1"}},
        {"id": "b", "name": "search", "args": {"query": "slow"}},
    )
    store.save_draft("r1", StepDraft(1, "two calls", calls, 5, 2, 3.0))
    store.keep_result("r1", 1, "a", 2, error=False)
    login(client, key_of("read"))
    page = client.get("/inspector/runs/r1").text
    under_way = page[page.index('id="step-1"') :]
    assert "Step 1 · tool calls under way" in under_way
    assert '<pre class="result">2</pre>' in under_way
    assert under_way.count("no result yet") == 1  # search is still running


def test_a_cross_site_form_post_is_refused(
    client: TestClient, store: SessionStore, key_of: Any
) -> None:
    login(client, key_of("read", "operate"))
    dead_lettered_run(store, client, "r1")
    for headers in ({"Origin": "https://evil.example"}, {"Referer": "https://evil.example/x"}, {}):
        refused = client.post("/inspector/runs/r1/replay", headers=headers)
        assert refused.status_code == 403, headers
    assert dlq.get(client.app.state.api.redis, "r1") is not None  # type: ignore[attr-defined]
    replayed = client.post(
        "/inspector/runs/r1/replay", headers={"Origin": HERE}, follow_redirects=False
    )
    assert (replayed.status_code, replayed.headers["location"]) == (
        303,
        "/inspector/runs/r1?replayed=1",
    )


def test_replay_needs_scope_operate_and_a_dead_letter(
    client: TestClient, store: SessionStore, key_of: Any, redis_client: redis.Redis
) -> None:
    dead_lettered_run(store, client, "r1")
    reader = {"Authorization": f"Bearer {key_of('read')}"}
    operator = {"Authorization": f"Bearer {key_of('operate')}"}
    assert client.post("/v1/runs/r1/replay", headers=reader).status_code == 403
    login(client, key_of("read"))
    page = client.post("/inspector/runs/r1/replay", headers={"Origin": HERE})
    assert page.status_code == 403 and "lacks scope 'operate'" in unescape(page.text)

    replayed = client.post("/v1/runs/r1/replay", headers=operator)
    assert replayed.status_code == 202
    assert replayed.json() == {
        "id": "r1",
        "status": "queued",
        "step": 0,
        "links": {"self": "/v1/runs/r1", "events": "/v1/runs/r1/events"},
    }
    run = store.load_run("r1")
    assert run is not None and (run.status, run.error, run.traceback) == ("running", None, None)
    assert redis_client.llen("agent.research") == 1  # the step is back on its queue
    again = client.post("/v1/runs/r1/replay", headers=operator)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:agentq:problem:not-dead-lettered"
