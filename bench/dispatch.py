"""Dispatch: N trivial runs drained by one agentq worker process vs N no-op tasks drained by
one stock Celery worker (same pool, same concurrency) and N no-op messages drained by one
Dramatiq worker process (as many threads), with SQLite and with PostgreSQL.

A trivial run is one step of an agent with the ``echo`` backend: no model call, but the
lease, the session load, the step commit and the result, as every step has. The queue is
filled first, then the worker starts; the rate is taken between the first and the last
result the backend publishes, so the worker's start-up is not in it. The worker's CPU time
per run is reported beside it: on a shared machine it moves less than the rate.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from celery import Celery

from app.errors import AgentqError
from app.producer.submit import submit_many
from bench.dramatiq_actors import NOOP as NOOP_ACTOR
from bench.report import rate, ratio, scenario, target
from bench.services import TRIVIAL, Services, cpu_seconds, postgres_problem, postgres_schema
from bench.stock import NOOP

TARGET_RATIO = 0.8  # the floor: agentq within 0.8x of stock Celery
AIM_RATIO = 1.2  # issue 22: a durable trivial run at least 1.2x stock Celery, same run
FILL_BATCH = 1000
INPUT = "ping"


class DrainError(AgentqError):
    """Raised when a worker does not finish the bench's runs in time (see its log)."""


def drain(
    services: Services,
    stack: ExitStack,
    fill: Callable[[], int],
    start_worker: Callable[[], Any],
    timeout_s: float,
) -> dict[str, Any]:
    """Fill the queue, start the worker, time the results from the first to the last."""
    services.flush()
    runs = fill()
    watch = services.watch(stack)
    spawned = time.time()
    worker = start_worker()
    watch.wait(1, timeout_s)
    # CPU from the first result on: the worker's start-up (imports, connections) is not in it.
    cpu_before, counted = cpu_seconds(worker.pid), len(watch.done.seen)
    finished = watch.wait(runs, timeout_s)
    cpu_after = cpu_seconds(worker.pid)
    times = watch.done.times()
    if not finished:
        raise DrainError(
            f"{len(times)} of {runs} runs finished in {timeout_s:.0f} s; log: {worker.log_path}"
        )
    window = times[-1] - times[0]
    cpu = None
    if cpu_before is not None and cpu_after is not None and runs > counted:
        cpu = (cpu_after - cpu_before) / (runs - counted)
    return {
        "runs": runs,
        "failed": watch.done.failed(),
        "window_s": round(window, 3),
        "runs_per_s": round(rate(runs - 1, window) or 0, 1),
        "first_result_after_spawn_s": round(times[0] - spawned, 2),
        "worker_cpu_ms_per_run": round(cpu * 1000, 3) if cpu is not None else None,
    }


def fill_agentq(celery: Celery, runs: int) -> int:
    """``runs`` trivial runs, enqueued with submit_many."""
    for start in range(0, runs, FILL_BATCH):
        batch = min(FILL_BATCH, runs - start)
        submit_many([{"agent": TRIVIAL, "input": INPUT} for _ in range(batch)], celery=celery)
    return runs


def fill_stock(celery: Celery, runs: int) -> int:
    """``runs`` no-op tasks, published in pipelined batches (kombu's Producer.batch)."""
    task = celery.tasks[NOOP]
    with celery.producer_or_acquire() as producer, producer.batch(max_size=FILL_BATCH):
        for _ in range(runs):
            task.apply_async(producer=producer, task_id=str(uuid.uuid4()))
    return runs


def agentq_side(services: Services, runs: int, database_url: str) -> dict[str, Any]:
    with ExitStack() as stack:
        settings = services.settings(database_url)
        celery = services.agentq(settings, stack)
        figures = drain(
            services,
            stack,
            lambda: fill_agentq(celery, runs),
            lambda: services.agentq_worker(settings, TRIVIAL, stack),
            timeout_s=60 + runs / 20,
        )
    return {**figures, "worker": f"agentq worker, threads, c={services.concurrency}"}


def stock_side(services: Services, runs: int) -> dict[str, Any]:
    with ExitStack() as stack:
        figures = drain(
            services,
            stack,
            lambda: fill_stock(services.stock, runs),
            lambda: services.stock_worker(stack),
            timeout_s=60 + runs / 20,
        )
    return {**figures, "worker": f"celery worker, threads, c={services.concurrency}"}


def dramatiq_side(services: Services, runs: int) -> dict[str, Any]:
    with ExitStack() as stack:
        figures = drain(
            services,
            stack,
            lambda: services.dramatiq.fill(NOOP_ACTOR, runs),
            lambda: services.dramatiq_worker(stack),
            timeout_s=60 + runs / 20,
        )
    return {**figures, "worker": f"dramatiq, 1 process x {services.concurrency} threads"}


def _doc(
    name: str, agentq: dict[str, Any], stock: dict[str, Any], dramatiq: dict[str, Any]
) -> dict[str, Any]:
    cpu = "worker_cpu_ms_per_run"
    doc = scenario(name, "runs_per_s", {"agentq": agentq, "stock": stock, "dramatiq": dramatiq})
    doc["cpu_per_run_ratio"] = ratio(agentq[cpu], stock[cpu])
    doc["cpu_per_run_ratio_dramatiq"] = ratio(agentq[cpu], dramatiq[cpu])
    doc["targets"] = {"ratio": {**target(doc["ratio"], TARGET_RATIO), "aim": AIM_RATIO}}
    return doc


def baselines(services: Services, runs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stock Celery's and Dramatiq's drains, measured one after the other."""
    return stock_side(services, runs), dramatiq_side(services, runs)


def run(services: Services, runs: int, postgres_url: str | None) -> dict[str, Any]:
    """The dispatch scenario: SQLite, then PostgreSQL (skipped, with why, when unreachable).

    Both baselines are measured before each agentq side, so each ratio is of neighbours.
    """
    stock, dramatiq = baselines(services, runs)
    sqlite = _doc("dispatch", agentq_side(services, runs, services.sqlite_url()), stock, dramatiq)
    out: dict[str, Any] = {**sqlite, "store": "sqlite"}
    problem = postgres_problem(postgres_url) if postgres_url else "no PostgreSQL URL given"
    if problem is not None:
        out["postgres"] = {"skipped": problem}
        return out
    assert postgres_url is not None
    stock_pg, dramatiq_pg = baselines(services, runs)
    with postgres_schema(postgres_url) as url:
        pg = _doc("dispatch", agentq_side(services, runs, url), stock_pg, dramatiq_pg)
    out["postgres"] = {**pg, "store": "postgresql"}
    return out
