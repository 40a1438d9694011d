"""The two sides of the GPU bench, each timed at one concurrency: (a) a direct asyncio httpx
client of the OpenAI-compatible server, (b) one-step agent runs through Redis and agentq
workers whose OpenAI backend calls the same server with the same request."""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa
from celery import Celery

from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import OpenAISettings, ReplicaSettings, Settings
from app.inference.backend import ChatRequest, GenerationParams, Message
from app.inference.openai_wire import error_in_body
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.schema import steps
from bench.gpu.services import GpuSampler
from bench.measure import agent_runs, percentile

AGENT = "gpubench"
INPUT = "Write a short story about a helpful agent."


@dataclass
class Side:
    """One side's timed window at one level."""

    calls: int = 0
    failed: int = 0
    wall_s: float = 0.0
    tokens_out: int = 0
    tokens_in: int = 0
    latencies_s: list[float] = field(default_factory=list)
    gpu: dict[str, Any] | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    span: tuple[float, float] = (0.0, 0.0)  # the timed window, time.monotonic()

    def figures(self) -> dict[str, Any]:
        wall = self.wall_s or float("nan")
        return {
            "calls": self.calls,
            "failed": self.failed,
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(self.calls / wall, 2) if self.wall_s else None,
            "tokens_per_s": round(self.tokens_out / wall, 1) if self.wall_s else None,
            "tokens_out": self.tokens_out,
            "tokens_in": self.tokens_in,
            "p50_ms": _ms(percentile(self.latencies_s, 0.5)),
            "p99_ms": _ms(percentile(self.latencies_s, 0.99)),
            "gpu": self.gpu if self.gpu is not None else "n/a",
            "first_error": self.error,
            **self.extra,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# ---- (a) the direct client ----


async def _direct(
    base_url: str, body: dict[str, Any], concurrency: int, calls: int, timeout_s: float
) -> Side:
    side = Side()
    left = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:

        async def one(timed: bool) -> None:
            started = time.perf_counter()
            try:
                response = await client.post("/chat/completions", json=body)
                response.raise_for_status()
                data = response.json()
                problem = error_in_body(data)
                if problem:
                    raise ValueError(problem)
            except (httpx.HTTPError, ValueError) as exc:  # counted, the first one kept
                if timed:
                    side.failed += 1
                    side.error = side.error or f"{type(exc).__name__}: {exc}"[:300]
                return
            if timed:
                usage = data.get("usage") or {}
                side.calls += 1
                side.tokens_out += int(usage.get("completion_tokens") or 0)
                side.tokens_in += int(usage.get("prompt_tokens") or 0)
                side.latencies_s.append(time.perf_counter() - started)

        async def lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(timed=True)

        # Warm-up: each lane's connection is open and its first call is not timed.
        await asyncio.gather(*(one(timed=False) for _ in range(concurrency)))
        left = calls
        started, opened = time.perf_counter(), time.monotonic()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        side.wall_s = time.perf_counter() - started
        side.span = (opened, time.monotonic())
    return side


def direct_calls(
    base_url: str, body: dict[str, Any], concurrency: int, calls: int, timeout_s: float
) -> Side:
    """``calls`` chat completions of ``body`` from ``concurrency`` coroutines on one client,
    timed after one untimed call per coroutine."""
    return asyncio.run(_direct(base_url, body, concurrency, calls, timeout_s))


# ---- (b) agent runs through Redis and workers ----


def _step_tokens(database_url: str) -> tuple[int, int]:
    """Tokens out and in of every committed step in the step store."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(steps.c.tokens_out), 0),
                    sa.func.coalesce(sa.func.sum(steps.c.tokens_in), 0),
                )
            ).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1])


class QueueSide:
    """Redis, the agents file and the Celery app of the agentq side; workers per level."""

    def __init__(
        self, stack: ExitStack, tmp: Path, base_url: str, model: str, max_tokens: int
    ) -> None:
        self.tmp = tmp
        server = RedisServer()
        stack.callback(server.cleanup)
        server.start()
        agents = tmp / "agents.yaml"
        agents.write_text(
            f"agents:\n  - name: {AGENT}\n    backend: openai\n    max_steps: 2\n"
            f"    max_tokens: {max_tokens}\n"
        )
        self.settings = Settings(
            redis_url=server.url,
            database_url=f"sqlite:///{tmp / 'agentq.sqlite3'}",
            agents_file=agents,
            openai=OpenAISettings(replicas=[ReplicaSettings(url=base_url)], model=model),
        )
        self.celery: Celery = create_celery(self.settings)
        stack.callback(self.celery.close)
        self.redis = redis.Redis.from_url(server.url)
        stack.callback(self.redis.close)
        self.log_errors: list[str] = []
        self._dbs = 0

    def request(self, max_tokens: int) -> ChatRequest:
        """The conversation of a run's first step, as the worker sends it."""
        spec = context_of(self.celery).registry.spec(AGENT)
        return ChatRequest(
            (Message("system", spec.system_prompt), Message("user", INPUT)),
            GenerationParams(max_tokens=max_tokens),
        )

    def _stop(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:  # signal all first: they shut down side by side
            worker.terminate()
        for worker in workers:
            worker.stop()
            lines = worker.log_path.read_text(errors="replace").splitlines()
            self.log_errors += [ln for ln in lines if "ERROR" in ln or "CRITICAL" in ln][:5]

    def runs(
        self, concurrency: int, threads: int, calls: int, timeout_s: float, gpu: GpuSampler
    ) -> Side:
        """``calls`` one-step runs through fresh workers of ``concurrency`` threads in all."""
        processes = math.ceil(concurrency / threads)
        per_process = math.ceil(concurrency / processes)
        self.redis.flushdb()
        self._dbs += 1
        url = f"sqlite:///{self.tmp / f'agentq-{self._dbs}.sqlite3'}"
        migrate(url)
        settings = self.settings.model_copy(update={"database_url": url})
        env = {"AGENTQ_OPENAI__TIMEOUT_S": str(timeout_s)}
        workers = [
            WorkerProcess(settings, [AGENT], log_dir=self.tmp, concurrency=per_process,
                          extra_env=env)
            for _ in range(processes)
        ]  # fmt: skip
        with ExitStack() as stack:
            stack.callback(self._stop, workers)
            for worker in workers:
                worker.spawn()
            for worker in workers:
                worker.wait_ready(self.celery)
            # Warm-up: every worker thread opens its HTTP and database connections.
            agent_runs(self.celery, self.redis, AGENT, INPUT, processes * per_process, timeout_s)
            before = _step_tokens(url)
            started = time.monotonic()
            result = agent_runs(self.celery, self.redis, AGENT, INPUT, calls, timeout_s)
            window = gpu.window(started, time.monotonic())
            after = _step_tokens(url)
        return Side(
            calls=result.calls,
            failed=result.failed + int(result.extra["unfinished"]),
            wall_s=result.wall_s,
            tokens_out=after[0] - before[0],
            tokens_in=after[1] - before[1],
            gpu=window,
            extra={
                "worker_processes": processes,
                "threads_per_process": per_process,
                "unfinished": result.extra["unfinished"],
                "mean_held_by_workers": result.extra["mean_held_by_workers"],
            },
        )
