"""The session and step store on SQLite, held to :class:`StoreContract`."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import StoreError
from app.memory.migrate import migrate
from app.memory.sessions import SessionStore, make_engine
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
