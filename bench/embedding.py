"""``agentq bench embedding``: the embedding model through Triton vs in-process, and the cache.

Both sides run the same code (models/embedding/minilm/1/model.py: tokenizer, cut at 256 word
pieces, onnxruntime, mean pooling, L2 norm) on the same texts, in one run:

- **direct** (the baseline, "direct client"): the model in this process on onnxruntime, one
  caller, ``batch`` texts per model run;
- **triton**: ``threads`` client threads, each with its own gRPC client, sending ``batch``
  texts per request to Triton's ``minilm`` (python backend, dynamic batching), which joins
  concurrent requests into one model run; Triton's statistics give the mean rows per run.

Texts/s of each, triton/direct as the ratio, for one text per request (what a worker
embedding a query sends) and for ``big_batch`` texts per request (storing a document's chunks).
Then the cache: the median time of a cache hit (one MGET on a Redis of the bench's own)
beside the model call it saves.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
import tritonclient.grpc as grpcclient

from app.config import REPO_ROOT, Settings
from app.inference.embedding_backends import TritonEmbedder
from app.inference.embeddings import CachedEmbedder, EmbeddingCache, batches
from app.local import embedding
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from bench.report import environment, rate, ratio, write

_VOCABULARY = (
    "the agent stored a note about the quarterly report customer meeting project deadline "
    "budget review travel plan invoice payment team lunch weather forecast research paper "
    "summary database migration server outage release notes feedback survey contract renewal"
)
WORDS = tuple(_VOCABULARY.split())


@dataclass(frozen=True)
class Plan:
    """The bench's sizes."""

    texts: int = 512  # texts per measurement
    threads: int = 8  # Triton client threads
    big_batch: int = 32  # texts per request in the second setting
    samples: int = 50  # cache hits (and model calls) timed
    rounds: int = 3  # direct and Triton alternate this many times; medians are reported
    intra_op_threads: int = 0  # onnxruntime threads on both sides (0: one per core)


def make_texts(count: int, seed: int = 7) -> list[str]:
    """``count`` distinct sentences of 8 to 40 words (a note, a query, a chunk's start)."""
    rng = np.random.default_rng(seed)
    return [
        f"{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(8, 41)))) for i in range(count)
    ]


def direct_rate(model: embedding.DirectEmbedder, texts: list[str], batch: int) -> dict[str, Any]:
    """Texts/s of the in-process model, ``batch`` texts per run, one caller."""
    model.embed(texts[:batch], tenant="")  # warm
    started = time.perf_counter()
    for rows in batches(len(texts), batch):
        model.embed(texts[rows.start : rows.stop], tenant="")
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "seconds": round(seconds, 3),
        "texts_per_s": _r(rate(len(texts), seconds)),
    }


def _statistics(url: str) -> tuple[int, int]:
    """(rows inferred, model runs) of ``minilm`` so far, from Triton's statistics."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model_name="minilm", as_json=True)
    finally:
        client.close()
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def triton_rate(url: str, texts: list[str], batch: int, threads: int) -> dict[str, Any]:
    """Texts/s through Triton: ``threads`` callers, ``batch`` texts per request, each caller
    taking the next request's texts from a shared counter."""
    clients = [TritonEmbedder(url, batch_size=batch) for _ in range(threads)]
    for client in clients:
        client.embed(texts[:batch], tenant="")  # warm: the channel, the model
    work = batches(len(texts), batch)
    lock, position, errors = threading.Lock(), [0], []

    def caller(client: TritonEmbedder) -> None:
        while True:
            with lock:
                if position[0] >= len(work):
                    return
                rows = work[position[0]]
                position[0] += 1
            try:
                client.embed(texts[rows.start : rows.stop], tenant="")
            except Exception as exc:  # reported, not raised in a thread
                errors.append(repr(exc))
                return

    rows_before, runs_before = _statistics(url)
    workers = [threading.Thread(target=caller, args=(c,)) for c in clients]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    seconds = time.perf_counter() - started
    rows_after, runs_after = _statistics(url)
    for client in clients:
        client.close()
    runs = runs_after - runs_before
    return {
        "texts": len(texts),
        "seconds": round(seconds, 3),
        "texts_per_s": _r(rate(len(texts), seconds)),
        "model_runs": runs,
        "rows_per_model_run": round((rows_after - rows_before) / runs, 2) if runs else None,
        "errors": errors[:3],
    }


def cache_side(url: str, redis_url: str, texts: list[str], samples: int) -> dict[str, Any]:
    """Median time of a one-text model call (no cache) and of a cache hit for it."""
    plain = TritonEmbedder(url)
    client = redis.Redis.from_url(redis_url)
    cached = CachedEmbedder(plain, EmbeddingCache(client, ttl_s=3600, dim=plain.dim))
    calls, hits = [], []
    try:
        chosen = texts[:samples]
        for text in chosen:
            started = time.perf_counter()
            plain.embed([text], tenant="bench")
            calls.append(time.perf_counter() - started)
        cached.embed(chosen, tenant="bench")  # stored
        for text in chosen:
            started = time.perf_counter()
            cached.embed([text], tenant="bench")
            hits.append(time.perf_counter() - started)
        started = time.perf_counter()
        cached.embed(chosen, tenant="bench")
        batch_hit = time.perf_counter() - started
    finally:
        plain.close()
        client.close()
    call_ms, hit_ms = statistics.median(calls) * 1000, statistics.median(hits) * 1000
    return {
        "model_call_ms": round(call_ms, 3),
        "cache_hit_ms": round(hit_ms, 3),
        "call_over_hit": round(call_ms / hit_ms, 1),
        f"batch_of_{len(chosen)}_hit_ms": round(batch_hit * 1000, 3),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def compare(
    direct: embedding.DirectEmbedder, url: str, texts: list[str], batch: int, plan: Plan
) -> dict[str, Any]:
    """Direct and Triton alternately, ``plan.rounds`` times each (load that comes and goes
    falls on both); the median round of each side and the ratio of the medians."""
    rounds: dict[str, list[dict[str, Any]]] = {"direct": [], "triton": []}
    for _ in range(plan.rounds):
        rounds["direct"].append(direct_rate(direct, texts, batch))
        rounds["triton"].append(triton_rate(url, texts, batch, plan.threads))
    medians = {
        side: sorted(results, key=lambda r: r["texts_per_s"] or 0)[len(results) // 2]
        for side, results in rounds.items()
    }
    return {
        "texts_per_request": batch,
        **medians,
        "ratio": ratio(medians["triton"]["texts_per_s"], medians["direct"]["texts_per_s"]),
        "rounds": {side: [r["texts_per_s"] for r in results] for side, results in rounds.items()},
    }


def run(plan: Plan, tmp: Path, console: Any) -> dict[str, Any]:
    """The bench's document."""
    texts = make_texts(plan.texts)
    direct = embedding.DirectEmbedder(threads=plan.intra_op_threads)
    settings = Settings().triton
    repo = embedding.repository_with_embedding(settings.model_repository, tmp / "models")
    config = repo / "minilm" / "config.pbtxt"
    config.write_text(
        config.read_text().replace(
            'key: "intra_op_threads" value: { string_value: "0" }',
            f'key: "intra_op_threads" value: {{ string_value: "{plan.intra_op_threads}" }}',
        )
    )
    scenarios: list[dict[str, Any]] = []
    server = TritonServer(install_triton(settings.home), repo, log_path=tmp / "triton.log")
    server.start()
    try:
        with RedisServer() as redis_server:
            for batch in (1, plan.big_batch):
                console.print(
                    f"{batch} text(s) per request: direct and Triton, {plan.rounds} rounds",
                    highlight=False,
                )
                scenarios.append(compare(direct, server.grpc_url, texts, batch, plan))
            console.print("cache: a hit vs the model call", highlight=False)
            cache = cache_side(server.grpc_url, redis_server.url, texts, plan.samples)
    finally:
        server.stop()
    return {
        **environment(REPO_ROOT),
        "plan": asdict(plan),
        "metric": "texts/s (higher is better), median of the rounds; ratio = triton / direct",
        "scenarios": scenarios,
        "cache": cache,
    }


def main(plan: Plan, out: str | None, console: Any) -> int:
    """``agentq bench embedding``: run, print the tables, write embedding.json."""
    from rich.table import Table

    if not embedding.available():
        console.print("[red]the embedding extra is not installed (agentq[embedding])[/red]")
        return 2
    with tempfile.TemporaryDirectory(prefix="agentq-embedding-") as tmp:
        doc = run(plan, Path(tmp), console)
    path = Path(out) if out else Path(__file__).parent / "results" / "embedding.json"
    write(doc, path)
    table = Table(
        f"{plan.texts} texts", "direct (texts/s)", f"Triton, {plan.threads} threads (texts/s)",
        "Triton / direct", "rows per model run",
    )  # fmt: skip
    for s in doc["scenarios"]:
        table.add_row(
            f"{s['texts_per_request']} per request",
            str(s["direct"]["texts_per_s"]),
            str(s["triton"]["texts_per_s"]),
            f"{s['ratio']}x",
            str(s["triton"]["rows_per_model_run"]),
        )
    console.print(table)
    cache = doc["cache"]
    table = Table("one text", "model call (ms, median)", "cache hit (ms, median)", "call / hit")
    table.add_row("Triton minilm", str(cache["model_call_ms"]), str(cache["cache_hit_ms"]),
                  f"{cache['call_over_hit']}x")  # fmt: skip
    console.print(table)
    console.print(f"results in {path}", highlight=False)
    console.print(
        "rounds (texts/s): "
        + "; ".join(
            f"{s['texts_per_request']} per request: direct {s['rounds']['direct']}, "
            f"Triton {s['rounds']['triton']}"
            for s in doc["scenarios"]
        ),
        highlight=False,
    )
    failed = any(s["triton"]["errors"] for s in doc["scenarios"])
    return 1 if failed else 0
