"""The production long-term memory backend: PostgreSQL with pgvector.

``memories.embedding`` is ``vector(384)`` with an HNSW index (``vector_cosine_ops``, m=16,
ef_construction=64) made by migration 0010. A search first counts the memories in its
scope (tenant, agent, session, model; up to :data:`EXACT_BELOW`, on the B-tree indexes). A
smaller scope is searched exactly (its rows, then a sort: exact, and as fast as the index
there). A larger one orders by cosine distance (``<=>``) on the index under
``hnsw.ef_search`` = max(40, 2k) and, on pgvector >= 0.8, ``hnsw.iterative_scan =
relaxed_order``, so a filter that drops most of the index's candidates still fills ``k``;
when the index scan still returns fewer than ``k`` (a very selective metadata filter, past
``hnsw.max_scan_tuples``), the search is run again exactly, so fewer than ``k`` hits
means fewer matches.

A PostgreSQL without pgvector passes migration 0010 with a BYTEA stand-in column; this store
refuses to run there (:class:`ConfigurationError`). Install pgvector (compose's
``pgvector/pgvector`` image has it) and run ``agentq db upgrade``: :func:`enable_pgvector`
then converts the (necessarily empty) column and builds the index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from numpy.typing import ArrayLike
from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Select,
    bindparam,
    false,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from app.constants import EMBEDDING_DIM
from app.errors import ConfigurationError, StoreError
from app.memory.schema import Embedding, memories
from app.memory.sessions import store_error
from app.memory.vector_sql import MEMORY_COLUMNS, SqlVectorStore, scope, to_memory
from app.memory.vectors import JSON, Hit, checked_k, unit_vector, where_options

HNSW_INDEX: Final = "ix_memories_embedding_hnsw"
HNSW_M: Final = 16
HNSW_EF_CONSTRUCTION: Final = 64
MIN_EF_SEARCH: Final = 40  # pgvector's default
MAX_EF_SEARCH: Final = 1000  # pgvector's limit
ITERATIVE_SCAN_SINCE: Final = (0, 8)
EXACT_BELOW: Final = 5_000
"""A scope (tenant, agent, session, model) with fewer memories is searched exactly. Measured
on an agent's 3.1k of 100k memories (bench/vector_search.py's data): exact p50 19 ms (38-41
under load), the HNSW scan behind the filter 20-26 ms under load but recall@5 0.74. The
exact scan's time is its heap reads (3k blocks past pgserver's 128 MB shared_buffers); a
server that caches the table scans 3k rows in a few ms."""

_EMBEDDING_TYPE = """
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = to_regclass('memories') AND attname = 'embedding' AND NOT attisdropped
"""
_INSTALLED = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
_OFFERED = "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"


def pgvector_version(conn: Connection) -> tuple[int, ...] | None:
    """The ``vector`` extension's version in this database; None if it is not created."""
    version = conn.execute(text(_INSTALLED)).scalar_one_or_none()
    return None if version is None else tuple(int(part) for part in version.split("."))


def enable_pgvector(conn: Connection) -> bool:
    """Give ``memories`` its vector column and HNSW index if the server now has pgvector
    (migration 0010 ran without it); whether the column is a vector. Idempotent; run by
    :func:`app.memory.migrate.migrate` on PostgreSQL."""
    column = conn.execute(text(_EMBEDDING_TYPE)).scalar_one_or_none()
    if column is None or column == f"vector({EMBEDDING_DIM})":
        return column is not None
    if pgvector_version(conn) is None:
        if conn.execute(text(_OFFERED)).first() is None:
            return False
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError:
            return False  # not allowed to create it: the store's error says what to do
    # The store never wrote to a BYTEA column, so there is nothing to convert.
    conn.execute(
        text(f"ALTER TABLE memories ALTER COLUMN embedding TYPE vector({EMBEDDING_DIM}) USING NULL")
    )
    conn.execute(
        text(
            f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON memories USING hnsw "
            f"(embedding vector_cosine_ops) WITH (m = {HNSW_M}, "
            f"ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
    )
    return True


class PgVectorStore(SqlVectorStore):
    """Long-term memories in PostgreSQL, searched through pgvector's HNSW index."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        where = engine.url.render_as_string(hide_password=True)
        try:
            with engine.connect() as conn:
                version = pgvector_version(conn)
                column = conn.execute(text(_EMBEDDING_TYPE)).scalar_one_or_none()
        except DBAPIError as exc:
            raise store_error(exc, engine) from exc
        if version is None or column != f"vector({EMBEDDING_DIM})":
            if column is None:
                raise StoreError(
                    f"the session store at {where} has no memories table: run "
                    "`agentq db upgrade` or start with AGENTQ_AUTO_MIGRATE=true"
                )
            raise ConfigurationError(
                f"pgvector is missing on {where}: the long-term memory store on PostgreSQL "
                "needs the `vector` extension (pgvector >= 0.5; the pgvector/pgvector image "
                "has it). Install it on the server, then run `agentq db upgrade`"
            )
        self.version = version
        self._iterative = version >= ITERATIVE_SCAN_SINCE

    def _prepare(self, k: int, scoped: list[ColumnElement[bool]]) -> Select[Any]:
        """One statement that sets the search's HNSW settings for its transaction (SET LOCAL)
        and counts the memories in scope, up to :data:`EXACT_BELOW`."""
        ef_search = min(MAX_EF_SEARCH, max(MIN_EF_SEARCH, 2 * k))
        settings = [func.set_config("hnsw.ef_search", str(ef_search), True)]
        if self._iterative:
            settings.append(func.set_config("hnsw.iterative_scan", "relaxed_order", True))
        capped = select(literal(1)).select_from(memories).where(*scoped).limit(EXACT_BELOW)
        in_scope = select(func.count()).select_from(capped.subquery()).scalar_subquery()
        return select(in_scope.label("in_scope"), *settings)

    def search(
        self,
        vector: ArrayLike,
        *,
        tenant: str,
        k: int,
        agent: str | None = None,
        session_id: str | None = None,
        where: Mapping[str, JSON] | None = None,
        model: str | None = None,
    ) -> list[Hit]:
        query = unit_vector(vector)
        checked_k(k)
        scoped = scope(tenant, agent, session_id, model)
        terms = scoped + _metadata_terms(where)
        distance = memories.c.embedding.op("<=>", return_type=Float)(
            bindparam("query", query, type_=Embedding)
        )
        columns = (*MEMORY_COLUMNS, distance.label("distance"))
        try:
            with self._engine.begin() as conn:
                in_scope = conn.execute(self._prepare(k, scoped)).scalar_one()
                # Exact: ordering by an expression the HNSW index does not serve.
                exact = select(*columns).where(*terms).order_by(distance + 0).limit(k)
                rows: list[Any] = []
                if in_scope >= EXACT_BELOW:
                    nearest = select(*columns).where(*terms).order_by(distance).limit(k)
                    rows = list(conn.execute(nearest).all())
                if len(rows) < k:
                    rows = list(conn.execute(exact).all())
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc
        # relaxed_order may return neighbours slightly out of order: sort them.
        rows.sort(key=lambda row: row.distance)
        return [Hit(to_memory(row), 1.0 - float(row.distance)) for row in rows]


def _metadata_terms(where: Mapping[str, JSON] | None) -> list[ColumnElement[bool]]:
    """``where`` as JSONB equalities (jsonb's ``=``: ``1`` = ``1.0``, ``true`` is not ``1``)."""
    terms: list[ColumnElement[bool]] = []
    for key, accepted in where_options(where):
        value = memories.c["metadata"][key]
        equal = [value == bindparam(None, option, type_=JSONB) for option in accepted]
        terms.append(or_(*equal) if equal else false())
    return terms
