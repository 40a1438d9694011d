"""GET /v1/runs and GET /v1/runs/{id} for runs submitted from Python, on real Redis and
SQLite: queued runs listed and read before any worker runs, filters validated, pages
chained by cursor, a bad cursor a 400 problem."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.celery_ext.app import create_celery
from app.config import Settings
from app.memory.records import NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.producer.submit import submit, submit_many

AGENTS = {"agents": [{"name": "echo", "backend": "echo"}, {"name": "other", "backend": "echo"}]}


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump(AGENTS))
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentq.sqlite3'}",
        agents_file=agents,
        api={"auth": "none"},  # keys are tested in test_auth_api.py
    )


@pytest.fixture
def celery(settings: Settings) -> Iterator[Any]:
    app = create_celery(settings)
    yield app
    app.close()


@pytest.fixture
def client(settings: Settings, celery: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings, celery)) as test_client:
        yield test_client


def _problem(response: Any) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


def test_a_run_submitted_from_python_is_listed_and_read_as_queued(
    client: TestClient, celery: Any
) -> None:
    run = submit("echo", "hi", "s-1", stream=True, celery=celery)
    listed = client.get("/v1/runs")
    assert listed.status_code == 200
    [item] = listed.json()["items"]
    assert item["id"] == run.id and item["status"] == "queued" and item["session_id"] == "s-1"
    assert item["links"] == {"self": f"/v1/runs/{run.id}", "events": f"/v1/runs/{run.id}/events"}
    assert listed.json()["next_cursor"] is None
    read = client.get(f"/v1/runs/{run.id}").json()
    assert (read["status"], read["agent"], read["session_id"], read["stream"]) == (
        "queued", "echo", "s-1", True,
    )  # fmt: skip
    assert read["created_at"] == item["created_at"]


def test_pages_chain_by_cursor_and_filters_apply(
    client: TestClient, celery: Any, settings: Settings
) -> None:
    store = SessionStore.from_url(settings.database_url, migrate=False)  # the app migrated it
    step = StepRecord(0, StepKind.FINAL, "done", (), 5, 1, 2.0, "w@h")
    for n in range(3):
        started = datetime.now(UTC) - timedelta(minutes=n + 1)
        run = NewRun(f"done-{n}", "other", "x", created_at=started)
        assert store.commit_step(f"done-{n}", step, final_answer="ok", new_run=run)
    store.close()
    waiting = submit_many([{"agent": "echo", "input": f"q{n}"} for n in range(4)], celery=celery)
    expected = [*reversed(waiting.ids), "done-0", "done-1", "done-2"]
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = client.get("/v1/runs", params=params).json()
        seen += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == expected
    by = {
        "agent=other": ["done-0", "done-1", "done-2"],
        "status=queued": list(reversed(waiting.ids)),
        "status=succeeded&agent=echo": [],
    }
    for query, ids in by.items():
        assert [i["id"] for i in client.get(f"/v1/runs?{query}").json()["items"]] == ids


@pytest.mark.parametrize(
    ("query", "status", "kind"),
    [
        ("cursor=nonsense", 400, "bad-request"),
        ("status=lost", 422, "invalid-request"),
        ("limit=0", 422, "invalid-request"),
        ("limit=501", 422, "invalid-request"),
    ],
)
def test_bad_listing_parameters_are_problems(
    client: TestClient, query: str, status: int, kind: str
) -> None:
    response = client.get(f"/v1/runs?{query}")
    assert response.status_code == status
    assert _problem(response)["type"] == f"urn:agentq:problem:{kind}"
