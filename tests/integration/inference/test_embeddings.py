"""The embedding model for real: Triton's minilm (python backend, onnxruntime) over gRPC, the
Redis cache (the test database), and an OpenAI-compatible /v1/embeddings server."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import redis

from app.config import EmbeddingSettings, Settings
from app.errors import InferenceUnavailableError
from app.inference.embedding_backends import OpenAIEmbedder, TritonEmbedder
from app.inference.embeddings import CachedEmbedder, EmbeddingCache, chunk_text, make_embedder
from app.local.embedding import DirectEmbedder
from app.local.triton import TritonServer
from app.ops import metrics

pytestmark = pytest.mark.integration

CAT = "The cat sits on the mat"
CAT2 = "A cat is sitting on a rug"
MONEY = "Quarterly revenue grew by five percent"


@pytest.fixture
def triton_embedder(triton_embedding: TritonServer) -> Any:
    embedder = TritonEmbedder(triton_embedding.grpc_url)
    yield embedder
    embedder.close()


def test_embeddings_are_384_unit_vectors_and_similar_texts_score_higher(
    triton_embedder: TritonEmbedder,
) -> None:
    vectors = triton_embedder.embed([CAT, CAT2, MONEY], tenant="t")
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated
    assert triton_embedder.model_version == "minilm:1"


def test_a_batch_of_40_equals_one_by_one_and_the_in_process_model(
    triton_embedder: TritonEmbedder, direct_embedder: DirectEmbedder
) -> None:
    texts = [
        f"Note {i}: the meeting about project {i % 5} " + "moved " * (i % 9) for i in range(40)
    ]
    batch = triton_embedder.embed(texts, tenant="t")
    single = np.vstack([triton_embedder.embed([t], tenant="t") for t in texts])
    assert np.abs(batch - single).max() < 1e-4
    assert np.abs(batch - direct_embedder.embed(texts, tenant="t")).max() < 1e-4


def test_requests_larger_than_a_batch_are_split(triton_embedding: TritonServer) -> None:
    embedder = TritonEmbedder(triton_embedding.grpc_url, batch_size=7)
    try:
        texts = [f"text number {i}" for i in range(20)]
        vectors = embedder.embed(texts, tenant="t")
        assert vectors.shape == (20, 384)
        assert np.abs(vectors[13] - embedder.embed([texts[13]], tenant="t")[0]).max() < 1e-4
    finally:
        embedder.close()


def test_truncation_is_reported(triton_embedder: TritonEmbedder) -> None:
    long_text = "memory " * 400
    before = metrics.EMBEDDING_TRUNCATED.labels("triton")._value.get()
    vectors, tokens = triton_embedder.embed_counted([CAT, long_text])
    assert tokens[0] == 8  # [CLS] the cat sits on the mat [SEP]
    assert tokens[1] == 402 > triton_embedder.max_tokens
    assert metrics.EMBEDDING_TRUNCATED.labels("triton")._value.get() == before + 1
    # The model saw the first 256 pieces only: more text after them changes nothing.
    longer = triton_embedder.embed([long_text + "and an ending nobody sees"], tenant="t")
    assert np.abs(longer[0] - vectors[1]).max() < 1e-5


def test_the_tokenizer_comes_from_triton_and_chunks_fit_the_model(
    triton_embedder: TritonEmbedder,
) -> None:
    tokenizer = triton_embedder.tokenizer()
    document = " ".join(f"Paragraph {i} says the quarterly numbers were fine." for i in range(60))
    chunks = chunk_text(document, tokenizer, triton_embedder.max_tokens, overlap=32)
    assert len(chunks) > 1 and all(chunk in document for chunk in chunks)
    _, tokens = triton_embedder.embed_counted(chunks)
    assert (tokens <= 256).all()


def test_the_cache_hits_on_the_second_call(
    triton_embedder: TritonEmbedder, redis_client: redis.Redis
) -> None:
    cached = CachedEmbedder(triton_embedder, EmbeddingCache(redis_client, ttl_s=300, dim=384))
    hits = metrics.EMBEDDING_CACHE.labels("hit")._value.get()
    texts_sent = metrics.EMBEDDING_TEXTS.labels("triton")._value.get()
    first = cached.embed([CAT, CAT2], tenant="acme")
    assert metrics.EMBEDDING_TEXTS.labels("triton")._value.get() == texts_sent + 2
    second = cached.embed([CAT2, CAT], tenant="acme")
    assert metrics.EMBEDDING_TEXTS.labels("triton")._value.get() == texts_sent + 2
    assert metrics.EMBEDDING_CACHE.labels("hit")._value.get() == hits + 2
    assert np.array_equal(second, first[::-1])
    keys = sorted(redis_client.keys("agentq:embedding:*"))
    assert len(keys) == 2 and all(b"{acme|minilm%3A1}" in k for k in keys)
    assert 0 < redis_client.ttl(keys[0]) <= 300
    # Another tenant, and another model version, have entries of their own.
    cached.embed([CAT], tenant="globex")
    assert metrics.EMBEDDING_TEXTS.labels("triton")._value.get() == texts_sent + 3
    triton_embedder._version = "minilm:2"  # as if version 2 were deployed and learned
    triton_embedder.version_check_s = 3600
    try:
        cached.embed([CAT], tenant="acme")
    finally:
        triton_embedder._version, triton_embedder.version_check_s = None, 30.0
    assert metrics.EMBEDDING_TEXTS.labels("triton")._value.get() == texts_sent + 4
    assert len(redis_client.keys("agentq:embedding:*")) == 4


def test_make_embedder_from_settings(
    triton_embedding: TritonServer, redis_client: redis.Redis
) -> None:
    settings = Settings(_env_file=None, embedding=EmbeddingSettings(url=triton_embedding.grpc_url))
    embedder = make_embedder(settings, redis_client)
    try:
        assert isinstance(embedder, CachedEmbedder)
        assert embedder.embed([CAT], tenant="t").shape == (1, 384)
    finally:
        embedder.close()
    plain = make_embedder(
        settings.model_copy(
            update={"embedding": EmbeddingSettings(url=triton_embedding.grpc_url, cache=False)}
        )
    )
    assert isinstance(plain, TritonEmbedder)
    plain.close()


def test_an_unreachable_triton_is_unavailable() -> None:
    from app.local.processes import free_ports

    embedder = TritonEmbedder(f"127.0.0.1:{free_ports(1)[0]}", timeout_s=2)
    try:
        with pytest.raises(InferenceUnavailableError):
            embedder.embed([CAT], tenant="t")
        assert embedder.health() is False
    finally:
        embedder.close()


def test_openai_compatible_embedder(embeddings_http: Any, direct_embedder: DirectEmbedder) -> None:
    embedder = OpenAIEmbedder(
        embeddings_http.base_url, model="all-MiniLM-L6-v2", api_key="sk-test", batch_size=2
    )
    try:
        vectors = embedder.embed([CAT, CAT2, MONEY], tenant="t")
        expected = direct_embedder.embed([CAT, CAT2, MONEY], tenant="t")
        assert np.abs(vectors - expected).max() < 1e-5  # sorted by index, normalized
        assert [r["body"]["input"] for r in embeddings_http.requests] == [[CAT, CAT2], [MONEY]]
        assert embeddings_http.requests[0]["headers"]["Authorization"] == "Bearer sk-test"
        assert len(embedder.tokenizer().encode(CAT).ids) == 8
    finally:
        embedder.close()


def test_the_model_version_is_asked_again_and_kept_while_triton_is_away(
    triton_embedding: TritonServer,
) -> None:
    from app.local.processes import free_ports

    embedder = TritonEmbedder(triton_embedding.grpc_url, version_check_s=0, timeout_s=2)
    try:
        assert embedder.model_version == "minilm:1"
        embedder.close()
        embedder.url = f"127.0.0.1:{free_ports(1)[0]}"  # the server gone
        assert embedder.model_version == "minilm:1"
    finally:
        embedder.close()
