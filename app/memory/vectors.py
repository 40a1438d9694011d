"""Long-term memory storage: one interface (:class:`VectorStore`), two backends.

A memory is a text, its metadata and its embedding, always of one tenant, optionally of an
agent and a session. :func:`vector_store` picks the backend from the SQL dialect of the
session store: SQLite gets the embedded backend (app.memory.vector_sqlite: exact search in
numpy), PostgreSQL gets pgvector (app.memory.vector_pg: an HNSW index).

Search semantics, the same on both backends:

- ``tenant`` is required and always filters: no call reads another tenant's memories, and
  another tenant's memory id behaves as not found (:class:`MemoryNotFoundError`).
- ``agent``, ``session_id`` and ``model`` narrow the search to equal values.
- ``where`` is metadata equality: every key must be present with an equal JSON value; a list
  value means "one of" (``{"kind": ["fact", "preference"]}``). ``true`` does not equal ``1``.
- Hits come best first with ``score`` = cosine similarity (embeddings are unit length, so
  it is their dot product); fewer than ``k`` hits only when fewer memories match.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from app.constants import EMBEDDING_DIM
from app.errors import InvalidMemoryError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from app.memory.sessions import SessionStore

JSON: TypeAlias = Any
"""A JSON value: str, int, float, bool, None, a list or a dict of them."""

UNIT_TOLERANCE: Final = 1e-3
"""How far from 1 an embedding's norm may be (float32 rounding of a normalized vector)."""


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to store: ``embedding`` is the unit-length vector ``model`` made of ``text``."""

    tenant: str
    text: str
    embedding: NDArray[np.float32]
    model: str
    agent: str | None = None
    session_id: str | None = None
    metadata: Mapping[str, JSON] = field(default_factory=dict)
    # Its id when the caller makes it (a tool call's, so storing it again stores nothing new).
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Memory:
    """A stored memory (without its embedding)."""

    id: str
    tenant: str
    agent: str | None
    session_id: str | None
    text: str
    metadata: dict[str, JSON]
    model: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: the memory and its cosine similarity to the query (-1 to 1)."""

    memory: Memory
    score: float


class VectorStore(ABC):
    """Long-term memories of every tenant, searched by embedding; share one per process."""

    @abstractmethod
    def add(self, items: Sequence[NewMemory]) -> list[str]:
        """Store ``items`` in one transaction; their ids, in order. An item whose ``id`` is
        stored already is left as it is (a repeated add stores nothing new)."""

    @abstractmethod
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
        """The ``k`` memories of ``tenant`` nearest ``vector`` (unit length) that match the
        filters, best first (see the module's search semantics)."""

    @abstractmethod
    def get(self, tenant: str, id: str) -> Memory:
        """Memory ``id`` of ``tenant``; :class:`MemoryNotFoundError` if it has none such."""

    @abstractmethod
    def delete(
        self,
        tenant: str,
        ids: Sequence[str] | None = None,
        agent: str | None = None,
        session_id: str | None = None,
    ) -> int:
        """Delete ``tenant``'s memories with those ids (and of that agent and session, when
        given); how many went. With ``ids``, an id the tenant does not have raises
        :class:`MemoryNotFoundError` and nothing is deleted. Without any filter: all."""

    @abstractmethod
    def export(self, tenant: str) -> Iterator[Memory]:
        """Every memory of ``tenant``, oldest first, read in pages."""

    @abstractmethod
    def delete_tenant(self, tenant: str) -> int:
        """Delete every memory of ``tenant``; how many went."""

    @abstractmethod
    def close(self) -> None:
        """Release what the store holds in process (its engine is the caller's)."""


def vector_store(store_or_engine: SessionStore | Engine) -> VectorStore:
    """The backend for the session store's database: embedded on SQLite, pgvector on
    PostgreSQL (:class:`ConfigurationError` when the server lacks pgvector)."""
    from sqlalchemy import Engine

    engine = store_or_engine if isinstance(store_or_engine, Engine) else store_or_engine.engine
    dialect = engine.dialect.name
    if dialect == "sqlite":
        from app.memory.vector_sqlite import EmbeddedVectorStore

        return EmbeddedVectorStore(engine)
    if dialect == "postgresql":
        from app.memory.vector_pg import PgVectorStore

        return PgVectorStore(engine)
    from app.errors import ConfigurationError

    raise ConfigurationError(
        f"no long-term memory backend for {dialect}: use SQLite or PostgreSQL with pgvector"
    )


def unit_vector(value: ArrayLike, *, what: str = "the query") -> NDArray[np.float32]:
    """``value`` as a float32 vector of :data:`EMBEDDING_DIM`, checked finite and of unit
    length; :class:`InvalidMemoryError` otherwise."""
    array = np.asarray(value, dtype=np.float32)
    if array.shape != (EMBEDDING_DIM,):
        raise InvalidMemoryError(
            f"{what}'s embedding has shape {array.shape}, not ({EMBEDDING_DIM},): "
            "embed with the 384-dimension model (all-MiniLM-L6-v2)"
        )
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or abs(norm - 1.0) > UNIT_TOLERANCE:
        raise InvalidMemoryError(
            f"{what}'s embedding has norm {norm:.4f}, not 1: normalize it (v / ||v||)"
        )
    return array


def checked_k(k: int) -> int:
    """``k`` if it is a positive int, else :class:`InvalidMemoryError`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidMemoryError(f"k must be a positive integer, got {k!r}")
    return k


def checked_tenant(tenant: str) -> str:
    """``tenant`` if it is a non-empty string, else :class:`InvalidMemoryError`: a memory
    call without its tenant must fail, never read across tenants."""
    if not isinstance(tenant, str) or not tenant:
        raise InvalidMemoryError(
            f"a memory call needs its tenant (a non-empty string), got {tenant!r}"
        )
    return tenant


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality of two JSON values as JSON sees it: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def where_options(where: Mapping[str, JSON] | None) -> list[tuple[str, list[JSON]]]:
    """``where`` as (key, accepted values): a list value is its items, else the one value."""
    if not where:
        return []
    return [(key, value if isinstance(value, list) else [value]) for key, value in where.items()]


def matches(metadata: Mapping[str, JSON], options: Sequence[tuple[str, Sequence[JSON]]]) -> bool:
    """Whether ``metadata`` has, for every key of ``options``, one of its accepted values."""
    for key, accepted in options:
        if key not in metadata:
            return False
        value = metadata[key]
        if not any(json_equal(value, option) for option in accepted):
            return False
    return True
