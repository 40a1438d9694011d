"""The embedding client's pure parts: cache keys, the length rule, request building, the
cache wrapper's bookkeeping (fakeredis), vector bytes."""

from __future__ import annotations

import itertools
import string
from collections.abc import Sequence

import fakeredis
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from app.constants import embedding_cache_key
from app.errors import ConfigurationError
from app.inference.embedding_backends import OpenAIEmbedder, text_inputs
from app.inference.embeddings import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    ModelEmbedder,
    batches,
    chunk_text,
    from_bytes,
    normalized,
    text_digest,
    to_bytes,
)


def wordpiece() -> Tokenizer:
    """A small BERT-style tokenizer: a few whole words, then letters and ##letters."""
    words = ["the", "cat", "sat", "on", "mat", "dog", "un", "##believ", "##able"]
    letters = list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words, *letters, *".,!?'"]
    tokenizer = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tokenizer


def pieces(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text).ids)


def test_cache_keys_differ_by_tenant_version_and_text() -> None:
    digest = text_digest("hello")
    keys = {
        embedding_cache_key("a", "minilm:1", digest),
        embedding_cache_key("b", "minilm:1", digest),
        embedding_cache_key("a", "minilm:2", digest),
        embedding_cache_key("a", "minilm:1", text_digest("hello!")),
        # A colon in the tenant cannot make it another tenant's key with another version.
        embedding_cache_key("a:minilm", "1", digest),
    }
    assert len(keys) == 5
    key = embedding_cache_key("a", "minilm:1", digest)
    assert key == f"agentq:embedding:{{a|minilm%3A1}}:{digest}"
    assert text_digest("hello") == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )


def test_chunk_text_short_empty_and_blank() -> None:
    tokenizer = wordpiece()
    assert chunk_text("the cat sat", tokenizer, max_tokens=16) == ["the cat sat"]
    assert chunk_text("", tokenizer) == []
    assert chunk_text("   \n ", tokenizer) == []
    with pytest.raises(ConfigurationError):
        chunk_text("the cat", tokenizer, max_tokens=2)


@pytest.mark.parametrize("overlap", [0, 3, 8])
def test_chunks_are_exact_substrings_that_fit_and_cover_the_text(overlap: int) -> None:
    tokenizer = wordpiece()
    # No phrase repeats, so each chunk is found at one place only.
    marks = [a + b for a in string.ascii_lowercase[:8] for b in string.ascii_lowercase[:8]]
    text = " ".join(f"the {m} cat, unbelievable!" for m in marks)
    chunks = chunk_text(text, tokenizer, max_tokens=20, overlap=overlap)
    assert len(chunks) > 3
    position = 0
    for chunk in chunks:
        assert pieces(tokenizer, chunk) <= 20
        found = text.find(chunk)
        assert found >= 0 and text.find(chunk, found + 1) < 0, chunk
        # No gap: each starts within the one before or right after it (past a space).
        assert found <= position or not text[position:found].strip()
        position = found + len(chunk)
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])
    # Every chunk starts where a word starts: no continuation piece (##) at its head.
    for chunk in chunks:
        assert not tokenizer.encode(chunk, add_special_tokens=False).tokens[0].startswith("##")
    if overlap == 0:
        content = tokenizer.encode(text, add_special_tokens=False).ids
        assert sum(pieces(tokenizer, c) - 2 for c in chunks) == len(content)


def test_chunks_overlap_by_at_most_the_overlap() -> None:
    tokenizer = wordpiece()
    text = " ".join(f"the {a}{b} sat" for a in "abcdef" for b in "ghijkl")
    chunks = chunk_text(text, tokenizer, max_tokens=12, overlap=4)
    for before, after in itertools.pairwise(chunks):
        shared = next(
            (n for n in range(min(len(before), len(after)), 0, -1) if before.endswith(after[:n])),
            0,
        )
        assert 0 < pieces(tokenizer, after[:shared]) - 2 <= 4


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(
        st.sampled_from(["the", "cat", "unbelievable", "zq", "dog!", "mat,", "éa", "x'y", "猫"]),
        max_size=120,
    ),
    # Room for the longest word (unbelievable: 3 pieces), as 254 is for any WordPiece word.
    max_tokens=st.integers(min_value=5, max_value=40),
    overlap=st.integers(min_value=0, max_value=12),
)
def test_every_chunk_fits_and_no_piece_is_lost(
    words: list[str], max_tokens: int, overlap: int
) -> None:
    tokenizer = wordpiece()
    text = " ".join(words)
    chunks = chunk_text(text, tokenizer, max_tokens=max_tokens, overlap=overlap)
    content = tokenizer.encode(text, add_special_tokens=False).ids
    assert bool(chunks) == bool(content)
    for chunk in chunks:
        assert chunk in text
        assert pieces(tokenizer, chunk) <= max_tokens
    if chunks and overlap == 0:
        assert sum(pieces(tokenizer, c) - 2 for c in chunks) == len(content)


def test_a_word_longer_than_the_room_is_cut_inside() -> None:
    tokenizer = wordpiece()
    text = "the " + "abcdefghij" * 3 + " cat"
    chunks = chunk_text(text, tokenizer, max_tokens=10, overlap=0)
    assert all(pieces(tokenizer, c) <= 10 for c in chunks)
    assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_vector_bytes_round_trip_and_normalization() -> None:
    vector = np.arange(384, dtype=np.float32) / 7
    data = to_bytes(vector)
    assert len(data) == 384 * 4
    assert np.array_equal(from_bytes(data, 384), vector)
    assert from_bytes(data[:-4], 384) is None
    rows = normalized(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.dtype == np.float32
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_batches() -> None:
    assert batches(0, 64) == []
    assert [(r.start, r.stop) for r in batches(130, 64)] == [(0, 64), (64, 128), (128, 130)]


def test_triton_request_is_one_batch_of_rows() -> None:
    (tensor,) = text_inputs(["héllo", "world"])
    assert tensor.name() == "text"
    assert tensor.datatype() == "BYTES"
    assert tensor.shape() == [2, 1]


def test_openai_request_body() -> None:
    embedder = OpenAIEmbedder("http://127.0.0.1:9/v1/", model="all-MiniLM-L6-v2")
    try:
        assert embedder.base_url == "http://127.0.0.1:9/v1"
        assert embedder.request_body(("a", "b")) == {
            "model": "all-MiniLM-L6-v2",
            "input": ["a", "b"],
            "encoding_format": "float",
        }
        assert embedder.model_version == "openai:all-MiniLM-L6-v2"
        assert isinstance(embedder, ModelEmbedder)
    finally:
        embedder.close()


class CountingEmbedder:
    """A fake model: a text's vector is a one-hot of its length; remembers what it was sent."""

    dim = 8
    max_tokens = 256
    model_version = "fake:1"

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def embed(self, texts: Sequence[str], *, tenant: str) -> np.ndarray:
        self.sent.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % self.dim] = 1.0
        return out

    def tokenizer(self) -> Tokenizer:
        return wordpiece()

    def close(self) -> None:
        pass


def test_cached_embedder_sends_only_distinct_misses() -> None:
    redis = fakeredis.FakeRedis()
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, EmbeddingCache(redis, ttl_s=60, dim=8))
    assert isinstance(cached, ModelEmbedder) and isinstance(cached, Embedder)
    first = cached.embed(["a", "bb", "a"], tenant="t1")
    assert inner.sent == [["a", "bb"]]
    second = cached.embed(["bb", "ccc", "a"], tenant="t1")
    assert inner.sent[1] == ["ccc"]
    assert np.array_equal(second[0], first[1]) and np.array_equal(second[2], first[0])
    cached.embed(["a"], tenant="t2")  # another tenant: its own entries
    assert inner.sent[2] == ["a"]
    assert 0 < redis.ttl(redis.keys("agentq:embedding:*")[0]) <= 60
    assert cached.embed([], tenant="t1").shape == (0, 8)
