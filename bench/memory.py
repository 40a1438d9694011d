"""Memory: a worker process's RSS with 64 runs in flight, agentq vs stock Celery.

agentq's runs each make one call to the real Triton (scripted model, ``[delay:MS]``) and
wait in it; the stock worker's tasks sleep as long. Both workers: threads pool,
concurrency = runs in flight. RSS is sampled from /proc while the runs are held; two
rounds, so the second shows what the first left allocated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from celery import Celery

from app.config import Settings
from app.local.triton import TritonServer, install_triton
from app.producer.submit import submit_many
from bench.dispatch import DrainError
from bench.report import scenario, target
from bench.services import HOLDING, ResultWatch, Services, rss_mib
from bench.stock import SLEEP

IN_FLIGHT = 64
ROUNDS = 2
TARGET_MIB = 120.0  # issue 22 (stock Celery's worker holds about 88 MiB here); was 300


class RssSampler:
    """Peak RSS of ``pid``, sampled every ``interval_s`` by a thread of its own."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_mib(self.pid) or 0.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _active(celery: Celery, node: str) -> int:
    replies = celery.control.inspect(destination=[node], timeout=1.0).active() or {}
    return sum(len(tasks) for tasks in replies.values())


def _rounds(
    celery: Celery, node: str, pid: int, watch: ResultWatch, send: Callable[[], None], hold: float
) -> dict[str, Any]:
    idle = rss_mib(pid)
    peaks, in_flight = [], []
    for done_before in range(0, ROUNDS * IN_FLIGHT, IN_FLIGHT):
        with RssSampler(pid) as sampler:
            send()
            seen = 0
            while seen < IN_FLIGHT and len(watch.done.seen) == done_before:
                seen = max(seen, _active(celery, node))
            in_flight.append(seen)
            if not watch.wait(done_before + IN_FLIGHT, 60 + hold * 4):
                raise DrainError(f"{len(watch.done.seen)} runs of {IN_FLIGHT} finished")
        peaks.append(round(sampler.peak, 1))
    return {
        "in_flight": IN_FLIGHT,
        "in_flight_seen": in_flight,
        "idle_rss_mib": round(idle or 0.0, 1),
        "peak_rss_mib_by_round": peaks,
        "peak_rss_mib": max(peaks),
        "failed": watch.done.failed(),
    }


def agentq_side(services: Services, triton_url: str, hold_ms: int) -> dict[str, Any]:
    services.flush()
    with ExitStack() as stack:
        settings = services.settings(services.sqlite_url(), triton_url)
        celery = services.agentq(settings, stack)
        worker = services.agentq_worker(settings, HOLDING, stack, IN_FLIGHT).wait_ready(celery)
        watch = services.watch(stack)
        runs = [{"agent": HOLDING, "input": f"[delay:{hold_ms}] hold"}] * IN_FLIGHT

        def send() -> None:
            submit_many(runs, celery=celery)

        out = _rounds(celery, worker.node, worker.pid, watch, send, hold_ms / 1000)
    return {**out, "worker": f"agentq worker, threads, c={IN_FLIGHT}, one Triton call per run"}


def stock_side(services: Services, hold_ms: int) -> dict[str, Any]:
    services.flush()
    task = services.stock.tasks[SLEEP]
    with ExitStack() as stack:
        worker = services.stock_worker(stack, IN_FLIGHT).wait_ready(services.stock)
        watch = services.watch(stack)

        def send() -> None:
            for _ in range(IN_FLIGHT):
                task.delay(hold_ms / 1000)

        out = _rounds(services.stock, worker.node, worker.pid, watch, send, hold_ms / 1000)
    return {**out, "worker": f"celery worker, threads, c={IN_FLIGHT}, time.sleep per task"}


def start_triton(stack: ExitStack, tmp: Path) -> TritonServer:
    """Triton on CPU serving the scripted model, stopped with ``stack``."""
    base = Settings().triton
    server = TritonServer(
        install_triton(base.home), base.model_repository, log_path=tmp / "triton.log"
    )
    stack.callback(server.stop)
    return server.start()


def run(services: Services, hold_ms: int) -> dict[str, Any]:
    """The memory scenario's document."""
    with ExitStack() as stack:
        triton = start_triton(stack, services.tmp)
        agentq = agentq_side(services, triton.grpc_url, hold_ms)
    stock = stock_side(services, hold_ms)
    doc = scenario(
        "memory", "peak_rss_mib", {"agentq": agentq, "stock": stock}, higher_is_better=False
    )
    doc["targets"] = {"agentq_peak_rss_mib": target(agentq["peak_rss_mib"], TARGET_MIB, False)}
    doc["hold_ms"] = hold_ms
    return doc
