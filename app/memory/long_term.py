"""Long-term memory: texts an agent keeps across runs and sessions, found again by meaning.

:class:`LongTermMemory` joins the embedding model (:mod:`app.inference.embeddings`: a real
model on Triton or an OpenAI-compatible server, behind a Redis cache) and the vector store
beside the session store (:mod:`app.memory.vectors`). A stored text longer than the model's
limit is kept as several chunks (:func:`~app.inference.embeddings.chunk_text`), each found on
its own. Every memory is a tenant's, and every search is within one tenant.

Used by the ``remember`` and ``recall`` tools (:mod:`app.agents.memory_tools`) and by automatic
retrieval into an agent's prompt (``AgentSpec.memory.recall``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from app.config.memory import MemorySettings
from app.errors import InvalidMemoryError

if TYPE_CHECKING:  # numpy and the clients load with the memory, not with the worker
    from app.config import Settings
    from app.inference.embeddings import ModelEmbedder
    from app.memory.sessions import SessionStore
    from app.memory.vectors import JSON, Hit, VectorStore

_IDS = uuid.UUID("5c1e3f9a-6a51-4f0e-9d8e-6d0c2c7a1b44")  # namespace of memory ids made from keys


class LongTermMemory:
    """Store and search memories of tenants (share one per process; thread-safe)."""

    def __init__(
        self,
        store: VectorStore,
        embedder: ModelEmbedder,
        settings: MemorySettings,
        overlap: int = 32,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.overlap = overlap  # word pieces neighbouring chunks share

    def remember(
        self,
        tenant: str,
        text: str,
        *,
        agent: str | None = None,
        session_id: str | None = None,
        metadata: Mapping[str, JSON] | None = None,
        key: str | None = None,
    ) -> list[str]:
        """Keep ``text`` (in chunks when it is long) for ``tenant``; the ids stored. With
        ``key`` (a tool call's run, step and call id) the ids are made from it, so storing the
        same call again stores nothing new."""
        if not text.strip():
            raise InvalidMemoryError("a memory needs some text")
        if len(text) > self.settings.max_text_chars:
            raise InvalidMemoryError(
                f"a memory is at most {self.settings.max_text_chars} characters, this one "
                f"{len(text)}: store the gist"
            )
        from app.inference.embeddings import embed_chunks
        from app.memory.vectors import NewMemory

        chunks, vectors = embed_chunks(self.embedder, text, tenant=tenant, overlap=self.overlap)
        base = dict(metadata or {})
        items = []
        for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
            extra = {"chunk": i, "chunks": len(chunks)} if len(chunks) > 1 else {}
            items.append(
                NewMemory(
                    tenant,
                    chunk,
                    vector,
                    self.embedder.model_version,
                    agent,
                    session_id,
                    {**base, **extra},
                    id=None if key is None else str(uuid.uuid5(_IDS, f"{tenant}:{key}:{i}")),
                )
            )
        return self.store.add(items)

    def recall(
        self,
        tenant: str,
        query: str,
        *,
        k: int | None = None,
        agent: str | None = None,
        session_id: str | None = None,
        where: Mapping[str, JSON] | None = None,
        min_score: float | None = None,
    ) -> list[Hit]:
        """The memories of ``tenant`` nearest ``query`` (of that agent and session when given,
        matching ``where``), best first, scoring at least ``min_score``. Only vectors of the
        embedder's model version are compared (another model's are not in the same space)."""
        if not query.strip():
            return []
        (vector,) = self.embedder.embed([query], tenant=tenant)
        hits = self.store.search(
            vector,
            tenant=tenant,
            k=k or self.settings.recall_k,
            agent=agent,
            session_id=session_id,
            where=where,
            model=self.embedder.model_version,
        )
        floor = self.settings.min_score if min_score is None else min_score
        return [hit for hit in hits if hit.score >= floor]


class LazyMemory:
    """A worker's :class:`LongTermMemory`, made on first use: a worker whose agents never use
    memory opens no embedding client (nor needs the vector store's table)."""

    def __init__(self, settings: Settings, store: SessionStore, redis: Any) -> None:
        self._settings = settings
        self._store = store
        self._redis = redis
        self._memory: LongTermMemory | None = None
        self._lock = threading.Lock()

    def get(self) -> LongTermMemory:
        """The memory (made now if it is not yet)."""
        with self._lock:
            if self._memory is None:
                from app.inference.embeddings import make_embedder
                from app.memory.vectors import vector_store

                self._memory = LongTermMemory(
                    vector_store(self._store),
                    make_embedder(self._settings, self._redis),
                    self._settings.memory,
                    self._settings.embedding.chunk_overlap_tokens,
                )
            return self._memory

    def close(self) -> None:
        """Close the embedding client and the store's process state, if they were made."""
        with self._lock:
            if self._memory is not None:
                self._memory.embedder.close()
                self._memory.store.close()
                self._memory = None
