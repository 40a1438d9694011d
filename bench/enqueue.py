"""Enqueue: N runs through agentq's ``submit_many`` vs a loop of stock ``delay()``, and the
raw ceiling: redis-py pipelining LPUSHes of bodies the size of agentq's messages.

No worker runs: what is timed is the producer putting messages into Redis.
"""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from typing import Any

from app.celery_ext.context import context_of
from app.producer.submit import submit, submit_many
from bench.report import rate, ratio, scenario, target
from bench.services import TRIVIAL, Services
from bench.stock import NOOP, QUEUE

TARGET_VS_STOCK, TARGET_VS_RAW = 20.0, 0.5
RAW_BATCH = 1000
INPUT = "What is the capital of France?"


def _queue_bytes(services: Services, queue: str) -> int:
    item = services.redis.lindex(queue, 0)
    return len(item) if item is not None else 0


def _side(runs: int, queued: int, wall: float, size: int, how: str) -> dict[str, Any]:
    """One side's figures: ``queued`` of ``runs`` messages of ``size`` bytes in ``wall`` s."""
    return {
        "runs": runs,
        "queued": queued,
        "wall_s": round(wall, 3),
        "runs_per_s": round(rate(queued, wall) or 0, 1),
        "message_bytes": size,
        "how": how,
    }


def _agentq(
    services: Services, runs: int, accepted: str = "sql", one_by_one: bool = False
) -> dict[str, Any]:
    """agentq's producer with ``durability.accepted = accepted``: ``submit_many`` of every
    run, or (``one_by_one``) a loop of ``submit()`` as an API serving single calls does."""
    services.flush()
    with ExitStack() as stack:
        settings = services.settings(services.sqlite_url())
        settings.durability.accepted = accepted  # type: ignore[assignment]
        celery = services.agentq(settings, stack)
        spec = context_of(celery).registry.spec(TRIVIAL)
        submit_many([{"agent": TRIVIAL, "input": INPUT}], celery=celery)  # connect, warm caches
        services.flush()
        items = [{"agent": TRIVIAL, "input": INPUT} for _ in range(runs)]
        started = time.perf_counter()
        if one_by_one:
            for item in items:
                submit(item["agent"], item["input"], celery=celery)
        else:
            submit_many(items, celery=celery)
        wall = time.perf_counter() - started
    queued = int(services.redis.llen(spec.queue_name))
    size = _queue_bytes(services, spec.queue_name)
    how = "a loop of app.producer.submit" if one_by_one else "app.producer.submit_many"
    return _side(runs, queued, wall, size, f"{how} (validated), accepted={accepted}")


def _stock(services: Services, runs: int) -> dict[str, Any]:
    services.flush()
    task = services.stock.tasks[NOOP]
    task.delay()  # connect
    services.flush()
    started = time.perf_counter()
    for _ in range(runs):
        task.delay()
    wall = time.perf_counter() - started
    queued = int(services.redis.llen(QUEUE))
    size = _queue_bytes(services, QUEUE)
    return _side(runs, queued, wall, size, "a loop of task.delay() on a plain Celery app")


def _raw(services: Services, runs: int, size: int) -> dict[str, Any]:
    services.flush()
    body = uuid.uuid4().hex.encode() * (size // 32 + 1)
    body = body[:size]
    key = "raw"
    started = time.perf_counter()
    pipe = services.redis.pipeline(transaction=False)
    for i in range(runs):
        pipe.lpush(key, body)
        if (i + 1) % RAW_BATCH == 0:
            pipe.execute()
    pipe.execute()
    wall = time.perf_counter() - started
    queued = int(services.redis.llen(key))
    services.flush()
    how = f"redis-py pipeline, LPUSH of {size}-byte bodies, {RAW_BATCH} per round trip"
    return _side(runs, queued, wall, size, how)


def run(services: Services, runs: int) -> dict[str, Any]:
    """The enqueue scenario's document. agentq's default records each accepted run in SQL
    (docs/durability.md); the cost of that record is measured beside the Redis-only setting,
    for ``submit_many`` and for single ``submit()`` calls (a tenth of the runs)."""
    agentq = _agentq(services, runs)
    redis_only = _agentq(services, runs, accepted="redis")
    singles = max(100, runs // 10)
    single = _agentq(services, singles, one_by_one=True)
    single_redis_only = _agentq(services, singles, accepted="redis", one_by_one=True)
    stock = _stock(services, runs)
    raw = _raw(services, runs, agentq["message_bytes"] or 1000)
    vs_raw = ratio(agentq["runs_per_s"], raw["runs_per_s"])
    return scenario(
        "enqueue",
        "runs_per_s",
        {
            "agentq": agentq,
            "agentq_redis_only": redis_only,
            "agentq_submit_loop": single,
            "agentq_submit_loop_redis_only": single_redis_only,
            "stock": stock,
            "raw_ceiling": raw,
        },
        ratio_to_raw_ceiling=vs_raw,
        accepted_record_cost={
            "submit_many": ratio(agentq["runs_per_s"], redis_only["runs_per_s"]),
            "submit": ratio(single["runs_per_s"], single_redis_only["runs_per_s"]),
        },
        targets={
            "ratio": target(ratio(agentq["runs_per_s"], stock["runs_per_s"]), TARGET_VS_STOCK),
            "ratio_to_raw_ceiling": target(vs_raw, TARGET_VS_RAW),
        },
    )
