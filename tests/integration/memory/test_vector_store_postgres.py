"""pgvector's absence and arrival: migration 0010 passes on a PostgreSQL without pgvector (the
machine's, CI's) and the pgvector store then refuses to run with a ConfigurationError; once the
server has pgvector, ``agentq db upgrade`` (migrate) gives memories its vector column."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import inspect, text

from app.constants import EMBEDDING_DIM
from app.errors import ConfigurationError
from app.memory.migrate import HEAD_REVISION, migrate, schema_revision
from app.memory.sessions import make_engine
from app.memory.vector_pg import HNSW_INDEX
from app.memory.vectors import NewMemory, vector_store
from tests.fixtures.postgres import fresh_schema

pytestmark = pytest.mark.integration


def test_plain_postgresql_migrates_and_the_pgvector_store_says_what_is_missing(
    pg_empty_url: str,
) -> None:
    migrate(pg_empty_url)
    engine = make_engine(pg_empty_url)
    try:
        with engine.connect() as conn:
            offered = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).first()
        if offered is not None:
            pytest.skip("this PostgreSQL has pgvector: the test is for one without it")
        assert schema_revision(engine) == HEAD_REVISION
        assert {"memories", "memory_changes"} <= set(inspect(engine).get_table_names())
        with pytest.raises(ConfigurationError, match="pgvector is missing") as refused:
            vector_store(engine)
        assert "agentq db upgrade" in str(refused.value)
    finally:
        engine.dispose()


def test_upgrade_gives_the_column_its_vector_type_once_pgvector_is_there(
    pgvector_server: str,
) -> None:
    with fresh_schema(pgvector_server, with_public=True) as url:
        migrate(url)
        engine = make_engine(url)
        try:
            with engine.begin() as conn:  # as migration 0010 leaves it on a server without it
                conn.execute(text(f"DROP INDEX {HNSW_INDEX}"))
                conn.execute(
                    text("ALTER TABLE memories ALTER COLUMN embedding TYPE bytea USING NULL")
                )
            with pytest.raises(ConfigurationError, match="pgvector is missing"):
                vector_store(engine)

            migrate(url)
            store = vector_store(engine)
            vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
            vector[0] = 1.0
            store.add([NewMemory(tenant="acme", text="x", embedding=vector, model="m")])
            assert [hit.memory.text for hit in store.search(vector, tenant="acme", k=1)] == ["x"]
            assert HNSW_INDEX in {ix["name"] for ix in inspect(engine).get_indexes("memories")}
        finally:
            engine.dispose()
