"""``agentq session show|export|delete`` on real Redis, and the store on SQLite and PostgreSQL:
a deleted session is gone from SQL and from every Redis key of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from sqlalchemy import func, select

from app.config import Settings
from app.constants import DEFAULT_TENANT, history_keys, published_key, stream_key
from app.memory.history import SessionHistory, claim_session
from app.memory.migrate import migrate
from app.memory.records import CallRecord, NewRun, StepKind, StepRecord
from app.memory.schema import runs, sessions, steps
from app.memory.sessions import SessionStore
from tests.fixtures.cli import agentq
from tests.fixtures.postgres import fresh_schema

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def cli_settings(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> Iterator[Settings]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump({"agents": [{"name": "chat", "backend": "echo"}]}))

    def settings(url: str) -> Settings:
        return Settings(_env_file=None, redis_url=redis_url, database_url=url, agents_file=agents)

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
        migrate(url)
        yield settings(url)
        return
    with fresh_schema(request.getfixturevalue("postgres_server")) as url:
        migrate(url)
        yield settings(url)


@pytest.fixture
def store(cli_settings: Settings) -> Iterator[SessionStore]:
    s = SessionStore.from_url(cli_settings.database_url, migrate=False)
    yield s
    s.close()


def two_turns(store: SessionStore, client: redis.Redis) -> None:
    """Session s1: run r1 (a tool step, then its answer) and r2 (its answer), both succeeded,
    their Redis keys (streams, markers, results), its cached history; and s2 elsewhere."""
    for run_id, question in (("r1", "add 2 and 3"), ("r2", "and double it")):
        assert claim_session(store, NewRun(run_id, "chat", question, "s1")).held_by(run_id)
        if run_id == "r1":
            call = CallRecord("c1", "calculator", {"expression": "2+3"}, 5)
            assert store.commit_step("r1", StepRecord(0, StepKind.TOOL, "", (call,)))
        final = StepRecord(1 if run_id == "r1" else 0, StepKind.FINAL, f"answer {run_id}")
        assert store.commit_step(run_id, final, final_answer=f"answer {run_id}", session_id="s1")
        client.xadd(stream_key(DEFAULT_TENANT, run_id), {"event": "end"})
        client.set(published_key(run_id, 1), 1)
        client.set(f"celery-task-meta-{run_id}", json.dumps({"status": "SUCCESS"}))
    assert claim_session(store, NewRun("x1", "chat", "other", "s2")).held_by("x1")
    client.xadd(stream_key(DEFAULT_TENANT, "x1"), {"event": "token"})
    state = store.load_run("x1")
    SessionHistory(store, client, Settings(_env_file=None).sessions).of(store.load_run("r2"))
    assert state is not None and client.exists(*history_keys("s1")) == 2


def test_show_lists_the_runs_and_who_holds_the_session(
    cli_settings: Settings, store: SessionStore, redis_client: redis.Redis
) -> None:
    two_turns(store, redis_client)
    shown = json.loads(agentq(cli_settings, "session", "show", "s1", "--json").stdout)
    assert (shown["id"], shown["agent"], shown["runs"], shown["active_run"]) == (
        "s1", "chat", {"succeeded": 2}, None,
    )  # fmt: skip
    assert shown["history_version"] == 2
    assert [(r["id"], r["input"], r["answer"]) for r in shown["latest_runs"]] == [
        ("r2", "and double it", "answer r2"),
        ("r1", "add 2 and 3", "answer r1"),
    ]
    busy = json.loads(agentq(cli_settings, "session", "show", "s2", "--json").stdout)
    assert busy["active_run"] == "x1" and busy["runs"] == {"running": 1}
    text = agentq(cli_settings, "session", "show", "s1", env={"COLUMNS": "100"})
    assert text.returncode == 0, text.stderr
    assert "2 succeeded" in text.stdout and "and double it" in text.stdout
    missing = agentq(cli_settings, "session", "show", "nope")
    assert missing.returncode == 2 and "no session 'nope'" in missing.stderr


def test_export_writes_every_run_with_its_steps(
    cli_settings: Settings, store: SessionStore, redis_client: redis.Redis, tmp_path: Path
) -> None:
    two_turns(store, redis_client)
    out = tmp_path / "s1.json"
    written = agentq(cli_settings, "session", "export", "s1", "-o", str(out))
    assert written.returncode == 0, written.stderr
    exported = json.loads(out.read_text())
    assert exported["session"]["id"] == "s1"
    assert [r["id"] for r in exported["runs"]] == ["r1", "r2"]  # oldest first
    first = exported["runs"][0]
    assert [s["kind"] for s in first["steps"]] == ["tool", "final"]
    assert first["steps"][0]["tool_calls"][0]["result"] == 5
    assert first["answer"] == "answer r1"
    on_stdout = json.loads(agentq(cli_settings, "session", "export", "s1").stdout)
    assert on_stdout == exported


def test_delete_removes_the_session_everywhere_and_is_refused_while_a_run_runs(
    cli_settings: Settings, store: SessionStore, redis_client: redis.Redis
) -> None:
    two_turns(store, redis_client)
    refused = agentq(cli_settings, "session", "delete", "s2")
    assert refused.returncode == 2 and "running run(s) (x1" in refused.stderr
    assert store.load_run("x1") is not None
    deleted = agentq(cli_settings, "session", "delete", "s1", "--json")
    assert deleted.returncode == 0, deleted.stderr
    said = json.loads(deleted.stdout)
    assert (said["runs"], said["steps"]) == (2, 3)
    with store.engine.connect() as conn:
        left = {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (sessions, runs, steps)
        }
    assert left == {"sessions": 1, "runs": 1, "steps": 0}  # s2 and its running run stay
    for run_id in ("r1", "r2"):
        assert not redis_client.exists(
            stream_key(DEFAULT_TENANT, run_id),
            published_key(run_id, 1),
            f"celery-task-meta-{run_id}",
        )
    assert not redis_client.exists(*history_keys("s1"))
    assert redis_client.exists(stream_key(DEFAULT_TENANT, "x1"))
    forced = agentq(cli_settings, "session", "delete", "s2", "--force")
    assert forced.returncode == 0 and "1 run(s)" in forced.stdout
    assert store.load_run("x1") is None and not redis_client.exists(
        stream_key(DEFAULT_TENANT, "x1")
    )
    again = agentq(cli_settings, "session", "delete", "s2")
    assert again.returncode == 2 and "no session 's2'" in again.stderr
