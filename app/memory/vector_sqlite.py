"""The embedded long-term memory backend (SQLite): exact cosine search in numpy.

Memories live in the SQLite file (``memories``); each process keeps, per tenant it has
searched, a copy of that tenant's vectors and fields in memory. Before each search it reads the
tenant's ``memory_changes`` row (one primary-key lookup): if another process added memories,
only the rows past the last ``seq`` it holds are loaded; after a deletion the tenant's copy is
loaded again. So a write by any process is seen by the next search, without a full reload.

Why numpy rather than ``sqlite-vec`` 0.1.9 (measured on this 2-core machine, 100k x 384
unit vectors, 4 tenants, k=5): sqlite-vec's ``vec0`` brute-force KNN with the tenant as a
partition key took p50 19.5 ms / p99 25.8 ms (78.5 ms unfiltered); numpy's matrix-vector
product over the tenant's 25k rows took p50 1.0 ms / p99 2.7 ms (6.4 ms over all 100k). And
this Python's ``sqlite3`` (pyenv's build) cannot load extensions at all, nor may every user's.
The cost is memory: ~1.6 KB per memory held (the float32 vector plus its fields).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import DBAPIError

from app.constants import EMBEDDING_DIM
from app.memory.schema import memories, memory_changes
from app.memory.sessions import store_error
from app.memory.vector_sql import MEMORY_COLUMNS, SqlVectorStore, scope, to_memory
from app.memory.vectors import (
    JSON,
    Hit,
    Memory,
    checked_k,
    checked_tenant,
    matches,
    unit_vector,
    where_options,
)


@dataclass(frozen=True, slots=True)
class TenantVectors:
    """One tenant's memories as of its memory_changes row (``generation``, ``seq``,
    ``deletions``).

    A newer copy replaces it rather than changing it, so a search reads one consistent copy.
    Appending reuses the arrays' spare rows (capacity doubles when full): a copy reads only
    its first ``count`` rows, and only the newest copy is ever extended.
    """

    generation: str
    seq: int
    deletions: int
    count: int
    vectors: NDArray[np.float32]  # (capacity, EMBEDDING_DIM), unit rows
    agents: NDArray[np.object_]  # (capacity,)
    sessions: NDArray[np.object_]
    models: NDArray[np.object_]
    memories: tuple[Memory, ...]

    @classmethod
    def empty(cls) -> TenantVectors:
        none = np.empty(0, dtype=object)
        vectors = np.empty((0, EMBEDDING_DIM), dtype=np.float32)
        return cls("", 0, 0, 0, vectors, none, none, none, ())

    @property
    def matrix(self) -> NDArray[np.float32]:
        return self.vectors[: self.count]

    def column(self, name: str) -> NDArray[np.object_]:
        """``agents``, ``sessions`` or ``models``, this copy's rows only."""
        values: NDArray[np.object_] = getattr(self, name)
        return values[: self.count]

    def extended(
        self, generation: str, seq: int, deletions: int, rows: Sequence[Any]
    ) -> TenantVectors:
        """This copy with ``rows`` (of memories and their embeddings, in seq order) added."""
        added = [to_memory(row) for row in rows]
        count = self.count + len(added)
        arrays: list[Any] = [self.vectors, self.agents, self.sessions, self.models]
        if count > len(self.vectors):
            capacity = max(count, 2 * len(self.vectors), 64)
            grown = [np.empty((capacity, EMBEDDING_DIM), dtype=np.float32)] + [
                np.empty(capacity, dtype=object) for _ in range(3)
            ]
            for old, new in zip(arrays, grown, strict=True):
                new[: self.count] = old[: self.count]
            arrays = grown
        vectors, agents, sessions, models = arrays
        if added:
            vectors[self.count : count] = np.stack([row.embedding for row in rows])
            agents[self.count : count] = [m.agent for m in added]
            sessions[self.count : count] = [m.session_id for m in added]
            models[self.count : count] = [m.model for m in added]
        memories = self.memories + tuple(added)
        return TenantVectors(
            generation, seq, deletions, count, vectors, agents, sessions, models, memories
        )


class EmbeddedVectorStore(SqlVectorStore):
    """Long-term memories in the SQLite session store, searched exactly in numpy."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self._tenants: dict[str, TenantVectors] = {}
        self._lock = threading.Lock()  # one thread refreshes a tenant's copy at a time

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
        copy = self.vectors(checked_tenant(tenant))
        mask: NDArray[np.bool_] | None = None
        for name, wanted in (("agents", agent), ("sessions", session_id), ("models", model)):
            if wanted is not None:
                equal = copy.column(name) == wanted
                mask = equal if mask is None else mask & equal
        rows = np.arange(len(copy.memories)) if mask is None else np.flatnonzero(mask)
        if not len(rows):
            return []
        scores = copy.matrix[rows] @ query if mask is not None else copy.matrix @ query
        options = where_options(where)
        if options:
            order = np.argsort(-scores, kind="stable")
            picked = []
            for index in order:
                if matches(copy.memories[rows[index]].metadata, options):
                    picked.append(index)
                    if len(picked) == k:
                        break
            best = np.array(picked, dtype=np.int64)
        elif k < len(scores):
            best = np.argpartition(-scores, k - 1)[:k]
            best = best[np.argsort(-scores[best], kind="stable")]
        else:
            best = np.argsort(-scores, kind="stable")
        return [Hit(copy.memories[rows[i]], float(scores[i])) for i in best]

    def vectors(self, tenant: str) -> TenantVectors:
        """The tenant's in-process copy, brought up to date with the database first."""
        try:
            # One read transaction (deferred BEGIN: a snapshot), so the rows loaded are those
            # the memory_changes row read first describes.
            with self._engine.connect() as conn, self._lock:
                return self._refresh(conn, tenant)
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc

    def _refresh(self, conn: Connection, tenant: str) -> TenantVectors:
        columns = (memory_changes.c.generation, memory_changes.c.seq, memory_changes.c.deletions)
        state = conn.execute(select(*columns).where(memory_changes.c.tenant == tenant)).first()
        generation, seq, deletions = tuple(state) if state else ("", 0, 0)
        held = self._tenants.get(tenant)
        if held is not None and (held.generation, held.seq, held.deletions) == tuple(state or ()):
            return held
        if held is None or (held.generation, held.deletions) != (generation, deletions):
            held = TenantVectors.empty()  # a deletion, or the tenant deleted: load it all
        query = (
            select(*MEMORY_COLUMNS, memories.c.embedding)
            .where(*scope(tenant), memories.c.seq > held.seq, memories.c.seq <= seq)
            .order_by(memories.c.seq)
        )
        fresh = held.extended(generation, seq, deletions, conn.execute(query).all())
        self._tenants[tenant] = fresh
        return fresh

    def close(self) -> None:
        """Drop the in-process copies."""
        with self._lock:
            self._tenants.clear()
