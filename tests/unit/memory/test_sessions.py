"""The session and step store on SQLite, held to :class:`StoreContract`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from app.errors import StoreError
from app.memory.migrate import migrate
from app.memory.records import StepKind
from app.memory.sessions import NewRun, SessionStore, StepRecord, make_engine
from tests.fixtures.store_contract import StoreContract


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def empty_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'agentq.sqlite3'}"

    @pytest.fixture
    def store_url(self, empty_url: str) -> str:
        migrate(empty_url)
        return empty_url

    def test_pragmas_set_on_every_connection(self, store_url: str) -> None:
        engine = make_engine(store_url)
        try:
            with engine.connect() as conn:
                pragmas = {
                    name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
                }
        finally:
            engine.dispose()
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,
            "busy_timeout": 10000,
            "foreign_keys": 1,
        }

    def test_unreachable_database_raises_store_error(self, tmp_path: Path) -> None:
        store = SessionStore.from_url(
            f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", migrate=False
        )
        try:
            with pytest.raises(StoreError, match="unable to open database"):
                store.count_steps("r1")
        finally:
            store.close()


def test_a_runs_first_commit_on_the_driver_stores_what_sqlalchemy_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session-less run's first commit runs on SQLite's cursor: its rows must be the rows
    # the SQLAlchemy transaction writes (JSON, UTC timestamps, enums as text), byte for byte.
    url = f"sqlite:///{tmp_path / 'agentq.sqlite3'}"
    migrate(url)
    store = SessionStore.from_url(url, migrate=False)
    at = datetime(2026, 12, 3, 7, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    monkeypatch.setattr("app.memory.sessions.utc_now", lambda: at)  # the commit's time
    record = StepRecord(
        step=0, kind=StepKind.FINAL, model_output="é ok", tokens_in=3, tokens_out=2,
        latency_ms=1.5, worker="w1", replica="a:1",
    )  # fmt: skip
    on_driver = store._sqlite_create_with_step
    created: list[bool] = []

    def spied(*args: Any) -> bool:
        created.append(on_driver(*args))
        return created[-1]

    try:
        for run_id in ("fast", "slow"):
            new_run = NewRun(run_id, "research", {"q": "é", "n": [1, None]}, None, {"max_steps": 2})
            new_run = replace(new_run, created_at=at)
            # "slow": the SQLAlchemy transaction, as a run with a session takes.
            way: Any = spied if run_id == "fast" else lambda *_: False
            monkeypatch.setattr(store, "_sqlite_create_with_step", way)
            assert store.commit_step(run_id, record, final_answer={"a": "é"}, new_run=new_run)
            # A second delivery of the same step creates nothing and commits nothing.
            assert not store.commit_step(run_id, record, final_answer="x", new_run=new_run)
        assert created == [True, False]  # "fast" created on the driver; its duplicate not
        with store.engine.connect() as conn:
            rows = {
                table: [
                    row[1:] for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1")
                ]
                for table in ("runs", "steps")
            }
    finally:
        store.close()
    for table, (fast, slow) in rows.items():
        assert fast == slow, table


def test_a_failed_first_commit_on_the_driver_raises_store_error(tmp_path: Path) -> None:
    store = SessionStore.from_url(f"sqlite:///{tmp_path / 'empty.sqlite3'}", migrate=False)
    new_run = NewRun("r1", "research", "hi", None, {})
    record = StepRecord(step=0, kind=StepKind.FINAL, model_output="ok", worker="w1")
    try:
        with pytest.raises(StoreError, match="has no schema"):
            store.commit_step("r1", record, final_answer="ok", new_run=new_run)
    finally:
        store.close()
