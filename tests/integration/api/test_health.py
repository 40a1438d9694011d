"""The API's probes on real Redis and SQLite: /healthz answers while the process does, /readyz
says whether the broker and the session store answer (a 503 problem naming which does not);
neither needs an API key."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.config import Settings
from app.local.processes import free_port


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None, redis_url=redis_url, database_url=f"sqlite:///{tmp_path / 'q.sqlite3'}"
    )


def test_both_probes_answer_200_without_a_key_when_redis_and_the_store_do(
    api_settings: Settings,
) -> None:
    assert api_settings.api.auth == "keys"
    with TestClient(create_app(api_settings)) as client:
        refused = client.get("/v1/runs/some-run")  # the run routes want a key ...
        live = client.get("/healthz")  # ... the probes none
        ready = client.get("/readyz")
    assert refused.status_code == 401
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"broker", "session_store"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_is_a_503_problem_naming_redis_when_it_does_not_answer(
    api_settings: Settings,
) -> None:
    down = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with TestClient(create_app(down)) as client:
        live = client.get("/healthz")
        ready = client.get("/readyz")
    assert live.status_code == 200  # the process is up: restarting it would not help
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    assert ready.headers["Retry-After"]
    problem = ready.json()
    assert problem["type"].endswith(":service-unavailable")
    assert "broker" in problem["detail"] and "session_store" not in problem["detail"]


def test_readyz_is_a_503_problem_naming_the_store_when_it_does_not_answer(
    api_settings: Settings,
) -> None:
    down = api_settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test",
            "auto_migrate": False,
        }
    )
    with TestClient(create_app(down)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "session_store" in ready.json()["detail"]
    assert "broker (" not in ready.json()["detail"]


def test_the_probes_are_not_part_of_the_run_apis_document(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/healthz" not in paths and "/readyz" not in paths
