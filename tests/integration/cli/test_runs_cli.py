"""``agentq runs list|show`` on real Redis and SQLite: queued runs submitted from Python
included, ``--json`` parsed as JSON, ids whole in an 80-column terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml

from app.celery_ext.app import create_celery
from app.config import Settings
from app.memory.records import CallRecord, NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.producer.submit import submit_many
from tests.fixtures.cli import agentq

NARROW = {"COLUMNS": "80"}


@pytest.fixture
def cli_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump({"agents": [{"name": "echo", "backend": "echo"}]}))
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'agentq.sqlite3'}",
        agents_file=agents,
    )


@pytest.fixture
def runs(cli_settings: Settings) -> Iterator[dict[str, str]]:
    """Two queued runs (submitted from Python) and a stored one with a tool call, started an
    hour ago: their ids by name."""
    store = SessionStore.from_url(cli_settings.database_url, migrate=True)
    call = CallRecord("c1", "calculator", {"expression": "20+22"}, 42)
    step = StepRecord(0, StepKind.TOOL, "<tool_call>", (call,), 30, 12, 8.5, "w@h", replica="r-a")
    started = datetime.now(UTC) - timedelta(hours=1)
    assert store.commit_step(
        "stored-run", step, new_run=NewRun("stored-run", "echo", "add", None, created_at=started)
    )
    store.close()
    celery = create_celery(cli_settings)
    try:
        queued = submit_many(
            [{"agent": "echo", "input": "a"}, {"agent": "echo", "input": "b", "session_id": "s-1"}],
            celery=celery,
        ).ids
    finally:
        celery.close()
    yield {"first": queued[0], "second": queued[1], "stored": "stored-run"}


def test_list_shows_queued_runs_with_whole_ids_at_80_columns(
    cli_settings: Settings, runs: dict[str, str]
) -> None:
    out = agentq(cli_settings, "runs", "list", env=NARROW)
    assert out.returncode == 0, out.stderr
    for run_id in runs.values():
        assert run_id in out.stdout
    lines = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert lines[runs["first"]][1:3] == ["echo", "queued"]
    assert lines["stored-run"][1:3] == ["echo", "running"]


def test_list_json_pages_with_the_cursor_it_prints(
    cli_settings: Settings, runs: dict[str, str]
) -> None:
    first = agentq(cli_settings, "runs", "list", "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert [(r["id"], r["status"]) for r in page["items"]] == [
        (runs["second"], "queued"),
        (runs["first"], "queued"),
    ]
    assert page["items"][0]["session_id"] == "s-1"
    rest = agentq(cli_settings, "runs", "list", "--json", "--cursor", page["next_cursor"])
    assert json.loads(rest.stdout) == {
        "items": [json.loads(agentq(cli_settings, "runs", "list", "--json").stdout)["items"][2]],
        "next_cursor": None,
    }
    assert json.loads(rest.stdout)["items"][0]["id"] == "stored-run"
    only = agentq(cli_settings, "runs", "list", "--json", "--session", "s-1", "--status", "queued")
    assert [r["id"] for r in json.loads(only.stdout)["items"]] == [runs["second"]]


def test_a_bad_cursor_or_status_is_refused(cli_settings: Settings, runs: dict[str, str]) -> None:
    bad = agentq(cli_settings, "runs", "list", "--cursor", "nonsense")
    assert bad.returncode == 2
    assert "not one a run listing gave out" in bad.stderr
    unknown = agentq(cli_settings, "runs", "list", "--status", "lost")
    assert unknown.returncode == 2 and "lost" in unknown.stderr


def test_show_json_is_the_api_run_view(cli_settings: Settings, runs: dict[str, str]) -> None:
    queued = json.loads(agentq(cli_settings, "runs", "show", runs["second"], "--json").stdout)
    assert (queued["id"], queued["status"], queued["session_id"]) == (
        runs["second"], "queued", "s-1",
    )  # fmt: skip
    assert queued["steps"] == [] and queued["created_at"]
    stored = json.loads(agentq(cli_settings, "runs", "show", "stored-run", "--json").stdout)
    [step] = stored["steps"]
    assert step["tool_calls"] == [
        {
            "id": "c1",
            "name": "calculator",
            "args": {"expression": "20+22"},
            "result": 42,
            "error": False,
        }
    ]
    assert (step["tokens_in"], step["tokens_out"], step["worker"], step["replica"]) == (
        30, 12, "w@h", "r-a",
    )  # fmt: skip


def test_show_prints_the_steps_with_the_whole_id(
    cli_settings: Settings, runs: dict[str, str]
) -> None:
    out = agentq(cli_settings, "runs", "show", runs["first"], env=NARROW)
    assert out.returncode == 0, out.stderr
    assert runs["first"] in out.stdout and "queued" in out.stdout
    stored = agentq(cli_settings, "runs", "show", "stored-run", env=NARROW)
    assert 'calculator({"expression":' in stored.stdout and '"20+22"}) -> 42' in stored.stdout
    assert "w@h" in stored.stdout and "r-a" in stored.stdout
    missing = agentq(cli_settings, "runs", "show", "no-such-run")
    assert missing.returncode == 1 and "no run no-such-run" in missing.stderr
