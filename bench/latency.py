"""Latency: enqueue -> first step started, p50/p95/p99, at half the saturation rate.

The offered load is the same for the three sides: half the lowest of their saturation rates
(from the dispatch scenario of the same suite run, else measured here with a shorter drain),
so no worker is past half its capacity. Runs are submitted one at a time on a fixed
schedule (``submit()`` / ``delay()``), each stamped with the time just before its call.

When the first step started: for agentq, the run's ``created_at`` in the session store,
stamped by the worker when its first step begins (a first delivery takes no lease and
loads nothing before it); for stock Celery, the time the task
``bench.stamp`` returns, taken as its first line runs; for Dramatiq, the time its ``stamp``
actor returns, read back from its result backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from dramatiq import Message
from sqlalchemy import create_engine, select

from app.memory.schema import runs as runs_table
from app.producer.submit import submit
from bench import dispatch
from bench.dramatiq_actors import STAMP as STAMP_ACTOR
from bench.report import latency_summary, ratio, scenario, target
from bench.services import RESULT_PREFIX, TRIVIAL, ResultWatch, Services
from bench.stock import STAMP

LOAD_FRACTION = 0.5
TARGET_RATIO = 1.5  # agentq's p50 and p99 within 1.5x of stock's
WARMUP = 50
ID_CHUNK = 500


def offered_rate(saturation: dict[str, float | None]) -> float:
    """Half the lowest saturation rate of the sides (runs/s)."""
    rates = [r for r in saturation.values() if r]
    if not rates:
        raise dispatch.DrainError("no saturation rate measured: cannot choose the offered load")
    return LOAD_FRACTION * min(rates)


def paced(count: int, per_s: float, call: Callable[[], str]) -> dict[str, float]:
    """``call`` ``count`` times at ``per_s``, on schedule: id -> Unix time before its call."""
    sent: dict[str, float] = {}
    start = time.perf_counter()
    for i in range(count):
        due = start + i / per_s
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        before = time.time()
        sent[call()] = before
    return sent


def _wait(watch: ResultWatch, count: int, timeout_s: float, log: Any) -> None:
    if not watch.wait(count, timeout_s):
        raise dispatch.DrainError(f"{len(watch.done.seen)} of {count} runs finished; log: {log}")


def _side(sent: dict[str, float], started: dict[str, float], watch: ResultWatch) -> dict[str, Any]:
    waits = [started[i] - t for i, t in sent.items() if i in started]
    ends = [watch.done.seen[i][1] - t for i, t in sent.items() if i in watch.done.seen]
    return {
        "runs": len(sent),
        "failed": watch.done.failed(),
        "enqueue_to_start": latency_summary(waits),
        "enqueue_to_result": latency_summary(ends),
    }


def _created_at(database_url: str, ids: list[str]) -> dict[str, float]:
    engine = create_engine(database_url)
    out: dict[str, float] = {}
    try:
        with engine.connect() as conn:
            for i in range(0, len(ids), ID_CHUNK):
                query = select(runs_table.c.id, runs_table.c.created_at).where(
                    runs_table.c.id.in_(ids[i : i + ID_CHUNK])
                )
                # created_at comes back timezone-aware (UTC) from the schema's column type.
                for run_id, created in conn.execute(query):
                    out[run_id] = created.timestamp()
    finally:
        engine.dispose()
    return out


def agentq_side(services: Services, count: int, per_s: float) -> dict[str, Any]:
    services.flush()
    url = services.sqlite_url()
    with ExitStack() as stack:
        settings = services.settings(url)
        celery = services.agentq(settings, stack)
        worker = services.agentq_worker(settings, TRIVIAL, stack).wait_ready(celery)
        watch = services.watch(stack)
        for _ in range(WARMUP):
            submit(TRIVIAL, "warm", celery=celery)
        _wait(watch, WARMUP, 60, worker.log_path)
        watch.done.seen.clear()
        sent = paced(count, per_s, lambda: submit(TRIVIAL, "ping", celery=celery).id)
        _wait(watch, count, 60 + count / per_s, worker.log_path)
    return _side(sent, _created_at(url, list(sent)), watch)


def stock_side(services: Services, count: int, per_s: float) -> dict[str, Any]:
    services.flush()
    task = services.stock.tasks[STAMP]
    with ExitStack() as stack:
        worker = services.stock_worker(stack).wait_ready(services.stock)
        watch = services.watch(stack)
        for _ in range(WARMUP):
            task.delay()
        _wait(watch, WARMUP, 60, worker.log_path)
        watch.done.seen.clear()
        sent = paced(count, per_s, lambda: str(task.delay().id))
        _wait(watch, count, 60 + count / per_s, worker.log_path)
    ids = list(sent)
    raw = services.redis.mget([RESULT_PREFIX + i for i in ids])
    started = {i: float(json.loads(v)["result"]) for i, v in zip(ids, raw, strict=True) if v}
    return _side(sent, started, watch)


def dramatiq_side(services: Services, count: int, per_s: float) -> dict[str, Any]:
    services.flush()
    producer = services.dramatiq
    messages: dict[str, Message[Any]] = {}

    def send() -> str:
        message = producer.send(STAMP_ACTOR)
        messages[message.message_id] = message
        return message.message_id

    with ExitStack() as stack:
        worker = services.dramatiq_worker(stack).wait_ready()
        watch = services.watch(stack)
        for _ in range(WARMUP):
            producer.send(STAMP_ACTOR)
        _wait(watch, WARMUP, 60, worker.log_path)
        watch.done.seen.clear()
        sent = paced(count, per_s, send)
        _wait(watch, count, 60 + count / per_s, worker.log_path)
    started = {i: float(producer.result(m)) for i, m in messages.items()}
    return _side(sent, started, watch)


def saturation(services: Services, runs: int) -> dict[str, float | None]:
    """Each side's drain rate (runs/s) from a short dispatch run."""
    stock, dramatiq = dispatch.baselines(services, runs)
    agentq = dispatch.agentq_side(services, runs, services.sqlite_url())
    return {side: figures["runs_per_s"] for side, figures in
            (("agentq", agentq), ("stock", stock), ("dramatiq", dramatiq))}  # fmt: skip


def run(
    services: Services,
    duration_s: float,
    saturation_rates: dict[str, float | None] | None,
    saturation_runs: int,
) -> dict[str, Any]:
    """The latency scenario's document."""
    measured_here = saturation_rates is None
    rates = saturation(services, saturation_runs) if saturation_rates is None else saturation_rates
    per_s = offered_rate(rates)
    count = max(100, int(per_s * duration_s))
    stock = stock_side(services, count, per_s)
    dramatiq = dramatiq_side(services, count, per_s)
    agentq = agentq_side(services, count, per_s)
    p50 = ratio(agentq["enqueue_to_start"]["p50_ms"], stock["enqueue_to_start"]["p50_ms"])
    p99 = ratio(agentq["enqueue_to_start"]["p99_ms"], stock["enqueue_to_start"]["p99_ms"])
    for side in (agentq, stock, dramatiq):
        side["p50_ms"] = side["enqueue_to_start"]["p50_ms"]
    return scenario(
        "latency",
        "p50_ms",
        {"agentq": agentq, "stock": stock, "dramatiq": dramatiq},
        higher_is_better=False,
        ratio_p99=p99,
        ratio_p99_dramatiq=ratio(
            agentq["enqueue_to_start"]["p99_ms"], dramatiq["enqueue_to_start"]["p99_ms"]
        ),
        offered_runs_per_s=round(per_s, 1),
        saturation_runs_per_s=rates,
        saturation_source="measured here" if measured_here else "dispatch scenario (SQLite)",
        targets={"ratio": target(p50, TARGET_RATIO, False), "ratio_p99": target(p99, 1.5, False)},
    )
