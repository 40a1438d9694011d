"""The run listing and detail (app.ops.runs) on real Redis and SQLite or PostgreSQL: runs
submitted from Python read as queued before any worker runs, merged with stored runs newest
first, filtered, and paged by cursor without a duplicate or a gap."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from app.celery_ext import queued
from app.celery_ext.app import create_celery
from app.config import Settings
from app.constants import lease_key, queued_key
from app.errors import BadCursorError
from app.memory.records import CallRecord, NewRun, StepKind, StepRecord
from app.memory.sessions import SessionStore
from app.ops.runs import RunSummary, decode_cursor, list_runs, run_detail
from app.producer.submit import submit, submit_many
from tests.fixtures.postgres import fresh_schema

AGENTS = {"agents": [{"name": "echo", "backend": "echo"}, {"name": "other", "backend": "echo"}]}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'runs.sqlite3'}"
        return
    with fresh_schema(request.getfixturevalue("postgres_server")) as url:
        yield url


@pytest.fixture
def celery(
    redis_client: redis.Redis, redis_url: str, database_url: str, tmp_path: Path
) -> Iterator[Celery]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump(AGENTS))
    settings = Settings(
        _env_file=None, redis_url=redis_url, database_url=database_url, agents_file=agents
    )
    app = create_celery(settings)
    yield app
    app.close()


@pytest.fixture
def store(database_url: str) -> Iterator[SessionStore]:
    s = SessionStore.from_url(database_url, migrate=True)
    yield s
    s.close()


def _stored(
    store: SessionStore,
    run_id: str,
    agent: str = "echo",
    *,
    at: datetime,
    session: str | None = None,
) -> None:
    """A finished one-step run, its first step started at ``at``."""
    step = StepRecord(0, StepKind.FINAL, "done", (), 7, 2, 3.5, "w@h")
    run = NewRun(run_id, agent, "in", session, created_at=at)
    assert store.commit_step(run_id, step, final_answer="ok", new_run=run)


def _all_pages(store: SessionStore, client: redis.Redis, limit: int, **filters: str) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = list_runs(store, client, cursor=cursor, limit=limit, **filters)
        assert len(page.items) <= limit
        ids += [run.id for run in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def test_a_run_submitted_from_python_reads_as_queued_then_running(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    run = submit("echo", "hi", "s-1", stream=True, celery=celery)
    [item] = list_runs(store, redis_client).items
    assert (item.id, item.agent, item.status, item.session_id) == (run.id, "echo", "queued", "s-1")
    detail = run_detail(store, redis_client, run.id)
    assert detail is not None
    assert (detail.status, detail.agent, detail.session_id, detail.stream) == (
        "queued", "echo", "s-1", True,
    )  # fmt: skip
    assert detail.submitted_at is not None and detail.stored is None
    redis_client.set(lease_key(run.id), "worker-1")  # a worker holds it
    assert list_runs(store, redis_client).items[0].status == "running"
    assert [r.id for r in list_runs(store, redis_client, status="running").items] == [run.id]
    assert list_runs(store, redis_client, status="queued").items == []
    assert run_detail(store, redis_client, "no-such-run") is None


def test_a_stored_run_is_listed_once_and_its_stale_entry_dropped(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    run = submit("echo", "hi", celery=celery)
    # Its worker stored the first step but could not drop the entry (Redis blinked).
    _stored(store, run.id, at=datetime.now(UTC))
    [item] = list_runs(store, redis_client).items
    assert (item.id, item.status, item.steps) == (run.id, "succeeded", 1)
    assert redis_client.lpos(queued_key("echo"), run.id) is None
    detail = run_detail(store, redis_client, run.id)
    assert detail is not None and detail.status == "succeeded" and detail.stored is not None


def test_the_detail_of_a_stored_run_has_its_steps_calls_and_traceback(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    call = CallRecord("c1", "calculator", {"expression": "2+2"}, 4)
    step = StepRecord(0, StepKind.TOOL, "<call>", (call,), 30, 12, 8.5, "w@h", replica="r-a")
    assert store.commit_step("r1", step, new_run=NewRun("r1", "echo", "add"))
    assert store.fail_run("r1", "model down", error_type="model_error", traceback="Traceback: x")
    detail = run_detail(store, redis_client, "r1")
    assert detail is not None and detail.stored is not None
    assert detail.status == "failed" and detail.stored.traceback == "Traceback: x"
    [stored] = detail.stored.steps
    assert (stored.tool_calls, stored.tokens_in, stored.worker, stored.replica) == (
        (call,), 30, "w@h", "r-a",
    )  # fmt: skip


def test_pages_merge_queued_and_stored_runs_newest_first_without_gaps(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    now = datetime.now(UTC)
    for n in range(3):  # started before anything was submitted
        _stored(store, f"old-{n}", at=now - timedelta(hours=1, minutes=n))
    waiting = submit_many([{"agent": "echo", "input": f"q{n}"} for n in range(4)], celery=celery)
    late = submit("other", "late", celery=celery)
    for n in range(2):  # stored runs that started after the submits
        _stored(store, f"new-{n}", "other", at=now + timedelta(minutes=10 - n))
    expected = [
        "new-0", "new-1", late.id, *reversed(waiting.ids), "old-0", "old-1", "old-2",
    ]  # fmt: skip
    assert [r.id for r in list_runs(store, redis_client, limit=100).items] == expected
    for limit in (1, 2, 3, 4):
        assert _all_pages(store, redis_client, limit) == expected
    assert _all_pages(store, redis_client, 2, agent="other") == ["new-0", "new-1", late.id]
    assert _all_pages(store, redis_client, 2, status="queued") == [
        late.id, *reversed(waiting.ids),
    ]  # fmt: skip
    assert _all_pages(store, redis_client, 2, status="succeeded") == [
        "new-0", "new-1", "old-0", "old-1", "old-2",
    ]  # fmt: skip


def test_the_session_filter_covers_queued_and_stored_runs(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    _stored(store, "before", at=datetime.now(UTC) - timedelta(minutes=5), session="s-9")
    _stored(store, "elsewhere", at=datetime.now(UTC) - timedelta(minutes=4), session="s-1")
    mine = submit("echo", "again", "s-9", celery=celery)
    submit("echo", "someone else", "s-1", celery=celery)
    page = list_runs(store, redis_client, session_id="s-9")
    assert [(r.id, r.status) for r in page.items] == [(mine.id, "queued"), ("before", "succeeded")]


def test_entries_older_than_the_ttl_are_not_listed(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    run = submit("echo", "hi", celery=celery)
    with redis_client.pipeline() as pipe:
        old = queued.now_us() - 3_600_000_000
        queued.add(pipe, {"echo": ["ancient"]}, {"ancient": queued.entry("echo", at=old)}, 60)
        pipe.execute()
    assert [r.id for r in list_runs(store, redis_client, queued_ttl_s=600).items] == [run.id]
    assert redis_client.lpos(queued_key("echo"), "ancient") is None


@pytest.mark.parametrize(
    "cursor",
    ["garbage!", "bm90IGpzb24", "eyJ0IjoxfQ", "eyJ0IjoiMSIsImlkIjoieCJ9", ""],
    ids=["not-base64", "not-json", "no-id", "time-not-int", "empty"],
)
def test_a_cursor_the_listing_did_not_give_out_is_refused(
    store: SessionStore, redis_client: redis.Redis, cursor: str
) -> None:
    with pytest.raises(BadCursorError, match="not one a run listing gave out"):
        list_runs(store, redis_client, cursor=cursor)


def test_a_cursor_names_the_last_item_of_its_page(
    celery: Celery, store: SessionStore, redis_client: redis.Redis
) -> None:
    submit_many([{"agent": "echo", "input": f"q{n}"} for n in range(3)], celery=celery)
    page = list_runs(store, redis_client, limit=2)
    assert page.next_cursor is not None
    last: RunSummary = page.items[-1]
    assert decode_cursor(page.next_cursor) == last.mark
