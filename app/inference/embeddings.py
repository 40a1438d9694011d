"""Embeddings for long-term memory: the Embedder interface, the length rule, the Redis cache.

The model (all-MiniLM-L6-v2, 384 dimensions, served by Triton or an OpenAI-compatible server:
:mod:`app.inference.embedding_backends`) sees at most ``max_tokens`` (256) word pieces, its
special tokens [CLS] and [SEP] included. The one rule for longer text (docs/memory.md):

- a **query** is embedded whole; the model keeps its first 255 pieces and [SEP], and reports
  the full count, so the cut shows in ``agentq_embedding_truncated_total``;
- a **document** that is stored is first cut by :func:`chunk_text` into exact substrings of at
  most ``max_tokens`` pieces each (overlapping by ``overlap`` pieces), each embedded and stored
  on its own, so no word of it is lost.

:class:`CachedEmbedder` keeps embeddings in Redis by tenant, model version and SHA-256 of the
text (:func:`app.constants.embedding_cache_key`): one MGET per batch, only the misses go to
the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from app.constants import embedding_cache_key
from app.errors import ConfigurationError
from app.ops import metrics

if TYPE_CHECKING:
    from redis import Redis
    from tokenizers import Tokenizer

    from app.config import EmbeddingSettings, Settings

SPECIAL_TOKENS = 2  # [CLS] and [SEP], which every text the model sees carries


@runtime_checkable
class Embedder(Protocol):
    """Texts to unit-length float32 vectors, ``[len(texts), dim]``: what a vector store and
    memory tools need."""

    dim: int

    @property
    def model_version(self) -> str:
        """What the vectors depend on (model name and served version): part of the cache key,
        and what a vector store records beside each vector."""
        ...

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        """One row per text, in order; ``tenant`` scopes the cache."""
        ...


@runtime_checkable
class ModelEmbedder(Embedder, Protocol):
    """An Embedder on a real model (what :func:`make_embedder` returns): also its word-piece
    limit and tokenizer, for :func:`embed_chunks`, and connections to close."""

    max_tokens: int

    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer, for :func:`chunk_text`."""
        ...

    def close(self) -> None:
        """Close connections."""
        ...


def chunk_text(
    text: str, tokenizer: Tokenizer, max_tokens: int = 256, overlap: int = 32
) -> list[str]:
    """``text`` cut into chunks the model sees whole: exact substrings of ``text`` (from the
    tokenizer's offsets), each at most ``max_tokens`` word pieces with [CLS] and [SEP], each
    starting where a word starts (so a chunk alone tokenizes into the same pieces), the next
    one starting ``overlap`` pieces or less before the end of the one before. Empty or blank
    text: no chunk. A text that fits is one chunk, itself.
    """
    room = max_tokens - SPECIAL_TOKENS
    if room < 1 or overlap < 0:
        raise ConfigurationError("chunk_text needs max_tokens > 2 and overlap >= 0")
    overlap = min(overlap, room // 2)  # each chunk moves on by at least half its room
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets: list[tuple[int, int]] = encoding.offsets
    words: list[int | None] = encoding.word_ids
    count = len(offsets)
    if count == 0:
        return []
    if count <= room:
        return [text]
    # Where a chunk may start or end: where a word starts (and, inside a word longer than the
    # room, every ``room`` pieces: never for the model's 254, as WordPiece makes one [UNK] of a
    # word over 100 characters; the rest of a word cut there may tokenize longer alone, and
    # the model then cuts it), then the end.
    bounds: list[int] = []
    for i in range(count):
        if i == 0 or words[i] != words[i - 1] or i - bounds[-1] >= room:
            bounds.append(i)
    bounds.append(count)
    chunks: list[str] = []
    first = 0  # index into bounds of this chunk's start
    while True:
        begin = bounds[first]
        last = first + 1  # index into bounds of this chunk's end: the furthest within room
        while last + 1 < len(bounds) and bounds[last + 1] - begin <= room:
            last += 1
        end = bounds[last]
        chunks.append(text[offsets[begin][0] : offsets[end - 1][1]])
        if end == count:
            return chunks
        # The next chunk starts at the first bound past this start that leaves at most
        # ``overlap`` pieces of this chunk to repeat.
        first = next(k for k in range(first + 1, last + 1) if bounds[k] >= end - overlap)


def text_digest(text: str) -> str:
    """SHA-256 (hex) of the UTF-8 text: the text's part of its cache key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def to_bytes(vector: np.ndarray) -> bytes:
    """A vector as the cache stores it: little-endian float32."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes, dim: int) -> np.ndarray | None:
    """A cached vector, or None when the bytes are not ``dim`` float32 values."""
    if len(data) != 4 * dim:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def normalized(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def batches(count: int, size: int) -> list[range]:
    """Index ranges of ``count`` items in requests of ``size`` at most."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


class EmbeddingCache:
    """Embeddings in Redis, by tenant, model version and SHA-256 of the text."""

    def __init__(self, redis: Redis, ttl_s: int, dim: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.dim = dim

    def keys(self, texts: Sequence[str], *, tenant: str, model_version: str) -> list[str]:
        return [embedding_cache_key(tenant, model_version, text_digest(t)) for t in texts]

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """The cached vector of each key (None: not cached), in one MGET."""
        if not keys:
            return []
        values: list[Any] = self.redis.mget(list(keys))
        return [None if v is None else from_bytes(v, self.dim) for v in values]

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (one row per key) for ``ttl_s``, in one pipeline round trip."""
        if not keys:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for key, vector in zip(keys, vectors, strict=True):
                pipe.set(key, to_bytes(vector), ex=self.ttl_s)
            pipe.execute()


class CachedEmbedder:
    """An Embedder whose texts are looked up in an :class:`EmbeddingCache` first; only the
    misses (each distinct text once) go to ``inner``, and what it returns is stored."""

    def __init__(self, inner: ModelEmbedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.dim = inner.dim
        self.max_tokens = inner.max_tokens

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        keys = self.cache.keys(texts, tenant=tenant, model_version=self.model_version)
        cached = self.cache.get_many(keys)
        missing: dict[str, list[int]] = {}  # text -> its rows
        for row, vector in enumerate(cached):
            if vector is None:
                missing.setdefault(texts[row], []).append(row)
            else:
                out[row] = vector
        missed = sum(map(len, missing.values()))
        metrics.embedding_cache(len(texts) - missed, missed)
        if missing:
            unique = list(missing)
            vectors = self.inner.embed(unique, tenant=tenant)
            for text, vector in zip(unique, vectors, strict=True):
                out[missing[text]] = vector
            self.cache.put_many([keys[rows[0]] for rows in missing.values()], vectors)
        return out

    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer()

    def close(self) -> None:
        self.inner.close()


def embed_chunks(
    embedder: ModelEmbedder, text: str, *, tenant: str, overlap: int = 32
) -> tuple[list[str], np.ndarray]:
    """A document to store: its chunks (:func:`chunk_text` with the embedder's tokenizer and
    limit) and their embeddings, one row each."""
    chunks = chunk_text(text, embedder.tokenizer(), embedder.max_tokens, overlap)
    return chunks, embedder.embed(chunks, tenant=tenant)


def make_embedder(settings: Settings, redis: Redis | None = None) -> ModelEmbedder:
    """The embedder ``settings.embedding`` describes, behind the Redis cache when it is on
    and ``redis`` is given."""
    from app.inference.embedding_backends import OpenAIEmbedder, TritonEmbedder

    config: EmbeddingSettings = settings.embedding
    inner: ModelEmbedder
    if config.backend == "triton":
        url = config.url
        if url is None:
            replicas = settings.triton.replica_list()
            if not replicas:
                raise ConfigurationError("embedding backend triton needs a Triton URL")
            url = replicas[0].url
        inner = TritonEmbedder(
            url,
            model=config.model,
            tokenizer_model=config.tokenizer_model,
            dim=config.dim,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
            timeout_s=config.timeout_s,
            version_check_s=settings.cache.version_check_s,
        )
    else:
        if not config.url:
            raise ConfigurationError(
                "embedding backend openai needs AGENTQ_EMBEDDING__URL (http://host:8000/v1)"
            )
        key = config.api_key.get_secret_value() if config.api_key else None
        inner = OpenAIEmbedder(
            config.url,
            model=config.openai_model,
            api_key=key,
            dim=config.dim,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
            timeout_s=config.timeout_s,
            tokenizer_path=config.tokenizer_path,
        )
    if config.cache and redis is not None:
        return CachedEmbedder(inner, EmbeddingCache(redis, config.cache_ttl_s, config.dim))
    return inner
