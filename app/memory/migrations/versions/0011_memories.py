"""Long-term memories (memories) and their per-tenant change counters (memory_changes).

On PostgreSQL whose server offers the ``vector`` extension (pgvector), the extension is
created if it is not there, ``embedding`` is ``vector(384)`` and an HNSW index (cosine) is
built on it. On a PostgreSQL without pgvector the migration still succeeds, with ``embedding``
as BYTEA: the tables exist, and the pgvector store refuses to run there (ConfigurationError)
until pgvector is installed and ``agentq db upgrade`` is run again
(app.memory.vector_pg.enable_pgvector). On SQLite ``embedding`` holds float32 bytes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# Frozen copies of the types in app.memory.schema at this revision.
DIM = 384
TIMESTAMP = sa.DateTime(timezone=True)
JSON_VALUE = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64


class _Vector(sa.types.UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **_kw: Any) -> str:
        return f"vector({DIM})"


def _pgvector_ready() -> bool:
    """Whether ``vector`` is created (or could be, and now is) in this database."""
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first():
        return True
    offered = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    if not conn.execute(sa.text(offered)).first():
        log.warning("memories: the server has no pgvector; embedding is BYTEA, not searchable")
        return False
    try:
        with conn.begin_nested():  # a refused CREATE (not superuser) must not abort the upgrade
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except DBAPIError as exc:
        log.warning("memories: CREATE EXTENSION vector was refused (%s); embedding is BYTEA", exc)
        return False
    return True


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    vectors = postgres and _pgvector_ready()
    embedding: sa.types.TypeEngine[Any] = _Vector() if vectors else sa.LargeBinary()
    op.create_table(
        "memories",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=True),
        sa.Column("session_id", sa.String(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", JSON_VALUE, nullable=False),
        sa.Column("embedding", embedding, nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
    )
    op.create_index("ix_memories_tenant_agent", "memories", ["tenant", "agent"])
    op.create_index("ix_memories_tenant_session", "memories", ["tenant", "session_id"])
    op.create_index("ix_memories_tenant_seq", "memories", ["tenant", "seq"], unique=True)
    if vectors:
        op.execute(
            "CREATE INDEX ix_memories_embedding_hnsw ON memories USING hnsw "
            f"(embedding vector_cosine_ops) WITH (m = {HNSW_M}, "
            f"ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
    op.create_table(
        "memory_changes",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("deletions", sa.Integer(), nullable=False),
        sa.Column("generation", sa.String(), nullable=False),
    )


def downgrade() -> None:
    # The vector extension stays: other tables of the database may use it.
    op.drop_table("memory_changes")
    op.drop_table("memories")
