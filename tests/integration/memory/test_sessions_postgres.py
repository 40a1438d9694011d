"""The session and step store on a real PostgreSQL: the same contract as SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from app.errors import StoreError
from app.memory.sessions import SessionStore
from tests.fixtures.store_contract import StoreContract

pytestmark = pytest.mark.integration


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def empty_url(self, pg_empty_url: str) -> str:
        return pg_empty_url

    @pytest.fixture
    def store_url(self, pg_url: str) -> Iterator[str]:
        yield pg_url
        # The schema is the test session's; each test starts from empty tables.
        engine = create_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE steps, waits, run_children, runs, sessions"))
        engine.dispose()

    def test_jsonb_on_postgres(self, session_store: SessionStore) -> None:
        with session_store.engine.connect() as conn:
            kind = conn.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'runs' "
                    "AND column_name = 'answer'"
                )
            ).scalar_one()
        assert kind == "jsonb"

    def test_unreachable_server_raises_store_error(self) -> None:
        store = SessionStore.from_url(
            "postgresql+psycopg://postgres@127.0.0.1:1/test", migrate=False
        )
        try:
            with pytest.raises(StoreError, match="reachable"):
                store.count_steps("r1")
        finally:
            store.close()
