"""What both long-term memory backends do the same way in SQL: add, get, delete, export.

Every statement filters on the tenant. A write also moves the tenant's row of
``memory_changes`` in the same transaction (``seq`` on add, ``deletions`` on delete; deleting
the tenant deletes the row), which is how the embedded backend's in-process copy learns of
writes made by other processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from app.errors import InvalidMemoryError, MemoryNotFoundError
from app.memory.records import utc_now
from app.memory.schema import memories, memory_changes
from app.memory.sessions import store_error
from app.memory.vectors import Memory, NewMemory, VectorStore, checked_tenant, unit_vector

PAGE: Final = 1000
"""Rows per statement when exporting, and ids per statement when deleting by id."""

MEMORY_COLUMNS: Final = (
    memories.c.id,
    memories.c.tenant,
    memories.c.agent,
    memories.c.session_id,
    memories.c.text,
    memories.c["metadata"],
    memories.c.model,
    memories.c.created_at,
)


def to_memory(row: Row[Any] | Any) -> Memory:
    """A memory from a row of :data:`MEMORY_COLUMNS` (first, in that order)."""
    return Memory(
        id=row.id,
        tenant=row.tenant,
        agent=row.agent,
        session_id=row.session_id,
        text=row.text,
        metadata=dict(row.metadata),
        model=row.model,
        created_at=row.created_at,
    )


def scope(
    tenant: str, agent: str | None = None, session_id: str | None = None, model: str | None = None
) -> list[ColumnElement[bool]]:
    """The WHERE terms of a tenant's memories, narrowed to an agent, session and model."""
    terms = [memories.c.tenant == checked_tenant(tenant)]
    if agent is not None:
        terms.append(memories.c.agent == agent)
    if session_id is not None:
        terms.append(memories.c.session_id == session_id)
    if model is not None:
        terms.append(memories.c.model == model)
    return terms


class SqlVectorStore(VectorStore):
    """The SQL half of a backend; a subclass adds ``search``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # SQLite: writers take the write lock at BEGIN (see app.memory.engine).
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")

    @property
    def engine(self) -> Engine:
        return self._engine

    def add(self, items: Sequence[NewMemory]) -> list[str]:
        rows = [self._row(item, index) for index, item in enumerate(items)]
        named = [item.id for item in items if item.id is not None]
        try:
            with self._writer.begin() as conn:
                if named:
                    found = select(memories.c.id).where(memories.c.id.in_(named))
                    stored = {row.id for row in conn.execute(found)}
                    new = [row for row in rows if row["id"] not in stored]
                else:
                    new = rows
                by_tenant: dict[str, list[dict[str, Any]]] = {}
                for row in new:
                    by_tenant.setdefault(row["tenant"], []).append(row)
                for tenant, tenant_rows in by_tenant.items():
                    last = self._take_seqs(conn, tenant, len(tenant_rows))
                    for offset, row in enumerate(tenant_rows):
                        row["seq"] = last - len(tenant_rows) + 1 + offset
                if new:
                    conn.execute(memories.insert(), new)
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc
        return [row["id"] for row in rows]

    @staticmethod
    def _row(item: NewMemory, index: int) -> dict[str, Any]:
        if not isinstance(item.text, str) or not isinstance(item.model, str) or not item.model:
            raise InvalidMemoryError(f"memory {index}: text and model must be strings")
        return {
            "id": item.id or uuid.uuid4().hex,
            "tenant": checked_tenant(item.tenant),
            "agent": item.agent,
            "session_id": item.session_id,
            "text": item.text,
            "metadata": dict(item.metadata),
            "embedding": unit_vector(item.embedding, what=f"memory {index}"),
            "model": item.model,
            "created_at": utc_now(),
        }

    def _take_seqs(self, conn: Connection, tenant: str, count: int) -> int:
        """Reserve ``count`` numbers in the tenant's sequence; the last one."""
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        upsert = dialect.insert(memory_changes).values(
            tenant=tenant, seq=count, deletions=0, generation=uuid.uuid4().hex
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[memory_changes.c.tenant],
            set_={"seq": memory_changes.c.seq + count},
        ).returning(memory_changes.c.seq)
        return int(conn.execute(upsert).scalar_one())

    def get(self, tenant: str, id: str) -> Memory:
        query = select(*MEMORY_COLUMNS).where(*scope(tenant), memories.c.id == id)
        row = self._read(lambda conn: conn.execute(query).first())
        if row is None:
            raise MemoryNotFoundError(f"tenant {tenant!r} has no memory {id!r}")
        return to_memory(row)

    def delete(
        self,
        tenant: str,
        ids: Sequence[str] | None = None,
        agent: str | None = None,
        session_id: str | None = None,
    ) -> int:
        terms = scope(tenant, agent, session_id)
        try:
            with self._writer.begin() as conn:
                if ids is None:
                    deleted = conn.execute(delete(memories).where(*terms)).rowcount
                else:
                    deleted = self._delete_ids(conn, tenant, terms, list(dict.fromkeys(ids)))
                if deleted:
                    conn.execute(
                        memory_changes.update()
                        .where(memory_changes.c.tenant == tenant)
                        .values(deletions=memory_changes.c.deletions + 1)
                    )
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc
        return int(deleted)

    @staticmethod
    def _delete_ids(
        conn: Connection, tenant: str, terms: list[ColumnElement[bool]], ids: list[str]
    ) -> int:
        found: set[str] = set()
        for page in _pages(ids):
            query = select(memories.c.id).where(*terms, memories.c.id.in_(page))
            found.update(conn.execute(query).scalars())
        missing = [id for id in ids if id not in found]
        if missing:  # the transaction rolls back: nothing is deleted
            raise MemoryNotFoundError(
                f"tenant {tenant!r} has no memory {', '.join(map(repr, missing[:5]))}"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        return sum(
            conn.execute(delete(memories).where(*terms, memories.c.id.in_(page))).rowcount
            for page in _pages(ids)
        )

    def export(self, tenant: str) -> Iterator[Memory]:
        last = 0
        while True:
            query = (
                select(*MEMORY_COLUMNS, memories.c.seq)
                .where(*scope(tenant), memories.c.seq > last)
                .order_by(memories.c.seq)
                .limit(PAGE)
            )
            rows = self._read(lambda conn, query=query: conn.execute(query).all())
            yield from (to_memory(row) for row in rows)
            if len(rows) < PAGE:
                return
            last = rows[-1].seq

    def delete_tenant(self, tenant: str) -> int:
        try:
            with self._writer.begin() as conn:
                deleted = conn.execute(delete(memories).where(*scope(tenant))).rowcount
                conn.execute(delete(memory_changes).where(memory_changes.c.tenant == tenant))
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc
        return int(deleted)

    def _read(self, body: Any) -> Any:
        try:
            with self._engine.connect() as conn:
                return body(conn)
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc

    def close(self) -> None:
        """Nothing held beyond the engine, which is the caller's."""


def _pages(ids: list[str]) -> Iterator[list[str]]:
    it = iter(ids)
    while page := list(islice(it, PAGE)):
        yield page
