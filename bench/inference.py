"""Inference benchmark: tritonclient called directly vs agent runs through Redis and a worker.

One run measures, side by side on the same Triton server (the point is the ratio; shared
machines are noisy):

- for each concurrency C, (a) unary calls from C coroutines on one ``tritonclient`` aio
  client, (b) one-step agent runs through Redis and one worker process of concurrency C,
  and for C >= 64 (b2) the same runs through two worker processes of concurrency C each;
- the token relay's overhead: for streamed runs, when the producer sees a token minus when
  the worker wrote it.

The scripted model answers each call ``latency_ms`` after it arrived whatever else runs
(``inflight`` scheduling, as TensorRT-LLM's in-flight batcher does while the GPU has room),
so the ideal is C / latency and a shortfall is the client's. ``--scheduling batch`` serves
as the default model does instead: two instances, each answering what queued meanwhile
together (static batching; throughput then depends on how calls line up).

``agentq bench inference`` or ``python -m bench.inference``; results also go to JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from rich.console import Console
from rich.table import Table

from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import REPO_ROOT, InferenceSettings, Settings, Strategy, TritonSettings
from app.errors import AgentqError
from app.inference.backend import ChatRequest, GenerationParams, Message
from app.local.processes import log_tail
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from bench.measure import (
    BATCH,
    INFLIGHT,
    SCHEDULING,
    BenchError,
    Throughput,
    agent_runs,
    bench_repository,
    direct_calls,
    scrape,
    streamed_runs,
)
from bench.report import write

AGENT = "bench"
INPUT = "Say hello."  # no directive: the scripted model answers at once, one step per run
STREAM_INPUT = "[words:20] [pace:10] stream please"  # tokens 10 ms apart, as decoded
MAX_BATCH_SIZE = 256  # 2 instances x 256: up to 512 calls execute at once
ROUNDS, MIN_CALLS, MAX_CALLS = 16, 40, 1024  # calls per level: ROUNDS x C, bounded
TWO_PROCESSES_FROM = 64
STREAM_RUNS, STREAM_CONCURRENCY = 200, 8
TARGET_RATIO, TARGET_RATIO_AT = 0.9, 64
TARGET_FIRST_P50_MS, TARGET_FIRST_P99_MS = 2.0, 10.0
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "inference.json"


def calls_for(concurrency: int) -> int:
    """Calls timed at one level: enough rounds of C to amortise ramp-up, bounded in time."""
    return min(max(ROUNDS * concurrency, MIN_CALLS), max(MAX_CALLS, concurrency))


def _fraction(tp: Throughput | None, ideal: float) -> float | None:
    return round(tp.per_s / ideal, 3) if tp and ideal else None


def _figures(tp: Throughput | None, ideal: float) -> dict[str, Any] | None:
    if tp is None:
        return None
    return {
        "calls": tp.calls,
        "failed": tp.failed,
        "wall_s": round(tp.wall_s, 3),
        "calls_per_s": round(tp.per_s, 1),
        "fraction_of_ideal": _fraction(tp, ideal),
        **tp.extra,
    }


class Bench:
    """The services of one bench run, started into ``stack`` (which stops them by PID)."""

    def __init__(
        self, stack: ExitStack, tmp: Path, latency_ms: int, scheduling: str, console: Console
    ) -> None:
        self.stack, self.tmp, self.console = stack, tmp, console
        base = Settings()
        server = RedisServer()
        stack.callback(server.cleanup)
        server.start()
        repo = bench_repository(
            base.triton.model_repository, tmp / "models", latency_ms, MAX_BATCH_SIZE, scheduling
        )
        self.triton = TritonServer(
            install_triton(base.triton.home), repo, log_path=tmp / "triton.log"
        )
        self.triton_exit: int | None = None
        stack.callback(self._stop_triton)
        self.triton.start()
        agents = tmp / "agents.yaml"
        agents.write_text(f"agents:\n  - name: {AGENT}\n    max_steps: 2\n    max_tokens: 64\n")
        self.settings = Settings(
            redis_url=server.url,
            database_url=f"sqlite:///{tmp / 'agentq.sqlite3'}",
            agents_file=agents,
            triton=TritonSettings(urls=[self.triton.grpc_url]),
            inference=InferenceSettings(strategy=Strategy.LEAST_IN_FLIGHT),
        )
        self.celery: Celery = create_celery(self.settings)
        stack.callback(self.celery.close)
        self.redis = redis.Redis.from_url(server.url)
        stack.callback(self.redis.close)
        spec = context_of(self.celery).registry.spec(AGENT)
        # The conversation of a run's first step, as the worker sends it.
        self.request = ChatRequest(
            (Message("system", spec.system_prompt), Message("user", INPUT)),
            GenerationParams(max_tokens=64),
        )
        self._dbs = 0
        self.log_errors: list[str] = []

    def _stop_triton(self) -> None:
        log = log_tail(self.triton.log_path, 10)
        self.triton_exit = self.triton.stop()
        if self.triton_exit:
            self.console.print(f"[yellow]tritonserver exited {self.triton_exit}:[/yellow]\n{log}")

    def probe(self, model: str = "ensemble") -> Callable[[], dict[str, float]]:
        return lambda: scrape(self.triton.metrics_url, model)

    def direct(self, concurrency: int, calls: int) -> Throughput:
        return direct_calls(
            self.triton.grpc_url, "ensemble", self.request, concurrency, calls, self.probe()
        )

    def _workers(self, stack: ExitStack, processes: int, concurrency: int) -> None:
        """Fresh Redis db and SQLite file, then ``processes`` workers, stopped with ``stack``."""
        self.redis.flushdb()
        self._dbs += 1
        url = f"sqlite:///{self.tmp / f'agentq-{self._dbs}.sqlite3'}"
        migrate(url)
        settings = self.settings.model_copy(update={"database_url": url})
        workers = [
            WorkerProcess(settings, [AGENT], log_dir=self.tmp, concurrency=concurrency)
            for _ in range(processes)
        ]
        stack.callback(self._stop, workers)
        for worker in workers:
            worker.spawn()
        for worker in workers:
            worker.wait_ready(self.celery)

    def _stop(self, workers: list[WorkerProcess]) -> None:
        for worker in workers:  # signal all first: they shut down side by side
            worker.terminate()
        for worker in workers:
            worker.stop()
            lines = worker.log_path.read_text(errors="replace").splitlines()
            self.log_errors += [ln for ln in lines if "ERROR" in ln or "CRITICAL" in ln][:5]

    def agentq(self, processes: int, concurrency: int, calls: int) -> Throughput:
        timeout = max(60.0, calls / 10)
        with ExitStack() as stack:
            self._workers(stack, processes, concurrency)
            # Warm-up: every worker thread makes its gRPC client and database connection.
            agent_runs(self.celery, self.redis, AGENT, INPUT, processes * concurrency, timeout)
            result = agent_runs(
                self.celery, self.redis, AGENT, INPUT, calls, timeout, probe=self.probe()
            )
        result.extra.update(processes=processes, concurrency_per_process=concurrency)
        return result

    def streaming(self, runs: int, concurrency: int) -> dict[str, Any]:
        with ExitStack() as stack:
            self._workers(stack, 1, concurrency)
            out = streamed_runs(self.celery, AGENT, STREAM_INPUT, runs, concurrency)
        return {"concurrency": concurrency, "input": STREAM_INPUT, **out.summary()}


def _line(name: str, tp: Throughput, ideal: float, scheduling: str) -> str:
    server = tp.extra.get("server") or {}
    failed = f", [red]{tp.failed} failed[/red]" if tp.failed else ""
    held = tp.extra.get("mean_held_by_workers")
    held_text = f"; workers held {held} steps on average" if held is not None else ""
    # In-flight calls leave execute() at once: Triton's batch and duration figures say
    # nothing then, its queue wait still does.
    batch = (
        f"mean batch {server.get('mean_batch')}, mean {server.get('mean_in_server')} "
        "requests in it, "
        if scheduling == BATCH
        else ""
    )
    return (
        f"  {name}: {tp.per_s:,.0f} calls/s ({tp.per_s / ideal:.0%} of ideal), "
        f"{tp.calls} calls in {tp.wall_s:.2f} s{failed}; Triton: {batch}"
        f"mean queue {server.get('mean_queue_ms')} ms{held_text}"
    )


def run(levels: list[int], latency_ms: int, scheduling: str, console: Console) -> dict[str, Any]:
    """Start the services, measure every level and the streaming overhead; the report."""
    rows = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-bench-")))
        with console.status("starting Redis and Triton"):
            bench = Bench(stack, tmp, latency_ms, scheduling, console)
        console.print(
            f"[green]✓[/green] Triton (pid {bench.triton.pid}) serving a copy of "
            f"models/scripted: ensemble and ensemble_stream with delay_ms={latency_ms}, "
            f"max_batch_size={MAX_BATCH_SIZE} and scheduling={scheduling} (the bench copy "
            "changes these three)"
        )
        for c in levels:
            calls, ideal = calls_for(c), c / (latency_ms / 1000)
            console.rule(f"C = {c}: {calls} calls, ideal {ideal:,.0f} calls/s")
            with console.status(f"C={c}: tritonclient directly"):
                direct = bench.direct(c, calls)
            console.print(_line("direct   ", direct, ideal, scheduling))
            with console.status(f"C={c}: agent runs, one worker process"):
                one = bench.agentq(1, c, calls)
            console.print(_line("agentq 1p", one, ideal, scheduling))
            two = None
            if c >= TWO_PROCESSES_FROM:
                with console.status(f"C={c}: agent runs, two worker processes of {c} each"):
                    two = bench.agentq(2, c, calls)
                line = _line("agentq 2p", two, 2 * ideal, scheduling)
                console.print(f"{line} (up to {2 * c} in flight)")
            rows.append(
                {
                    "concurrency": c,
                    "calls": calls,
                    "ideal_calls_per_s": round(ideal, 1),
                    "direct": _figures(direct, ideal),
                    "agentq": _figures(one, ideal),
                    "agentq_two_processes": _figures(two, 2 * ideal),
                    "ratio": round(one.per_s / direct.per_s, 3) if direct.per_s else None,
                }
            )
        console.rule(f"streaming: {STREAM_RUNS} runs, {STREAM_CONCURRENCY} in flight")
        with console.status("streamed runs"):
            streaming = bench.streaming(STREAM_RUNS, STREAM_CONCURRENCY)
        with console.status("stopping workers, Triton and Redis"):
            stack.close()
    return {
        "levels": rows,
        "streaming": streaming,
        "worker_log_errors": bench.log_errors,
        "triton_exit_code": bench.triton_exit,
    }


def _cell(figures: dict[str, Any] | None) -> str:
    if figures is None:
        return "—"
    failed = f" [red]{figures['failed']} failed[/red]" if figures["failed"] else ""
    return f"{figures['calls_per_s']:,.0f} ({figures['fraction_of_ideal']:.0%}){failed}"


def _mark(ok: bool) -> str:
    return "[green]✓[/green]" if ok else "[red]✗[/red]"


def show(report: dict[str, Any], console: Console) -> None:
    """The results table, the streaming figures and the targets."""
    model = report["model_changes"]
    table = Table(
        title=f"calls/s (fraction of ideal), model latency {report['latency_ms']} ms, "
        f"{model['scheduling']} scheduling"
    )
    for name in ("C", "direct", "agentq 1 process", "ratio", "agentq 2 processes", "ideal"):
        table.add_column(name, justify="right")
    for row in report["levels"]:
        table.add_row(
            str(row["concurrency"]),
            _cell(row["direct"]),
            _cell(row["agentq"]),
            f"{row['ratio']:.2f}" if row["ratio"] is not None else "—",
            _cell(row["agentq_two_processes"]),
            f"{row['ideal_calls_per_s']:,.0f}",
        )
    console.print(table)
    console.print(
        "agentq 2 processes: two workers of concurrency C each (up to 2C in flight; "
        "their fraction is of 2C / latency)"
    )
    for row in report["levels"]:
        if row["concurrency"] == TARGET_RATIO_AT and row["ratio"] is not None:
            ok = row["ratio"] >= TARGET_RATIO
            console.print(
                f"{_mark(ok)} ratio at C={TARGET_RATIO_AT}: {row['ratio']:.2f} "
                f"(target ≥ {TARGET_RATIO})"
            )
    s = report["streaming"]
    p50, p99 = s["first_token_p50_ms"], s["first_token_p99_ms"]
    if p50 is None or p99 is None:
        console.print(f"[red]streaming: no tokens seen ({s['failed']} of {s['runs']} failed)[/red]")
        return
    console.print(
        f"{_mark(p50 < TARGET_FIRST_P50_MS and p99 < TARGET_FIRST_P99_MS)} streaming overhead, "
        f"first token of {s['runs']} runs: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(targets < {TARGET_FIRST_P50_MS:g} ms, < {TARGET_FIRST_P99_MS:g} ms)"
    )
    console.print(
        f"  every token ({s['tokens']}): p50 {s['all_tokens_p50_ms']:.2f} ms, "
        f"p99 {s['all_tokens_p99_ms']:.2f} ms"
        + (f"; [red]{s['failed']} runs failed[/red]" if s["failed"] else "")
    )
    console.print(
        f"  split at Redis ({s['split_note']}): worker → Redis p50 "
        f"{s['worker_to_redis_p50_ms']:.2f} / p99 {s['worker_to_redis_p99_ms']:.2f} ms, "
        f"Redis → reader p50 {s['redis_to_reader_p50_ms']:.2f} / "
        f"p99 {s['redis_to_reader_p99_ms']:.2f} ms"
    )


def _cpu_model() -> str | None:
    # platform.processor() is empty on many Linux systems; /proc/cpuinfo names the CPU.
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)


def environment() -> dict[str, Any]:
    """The machine and the versions the figures were taken with."""
    return {
        "machine": {
            "processor": platform.processor(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "celery": version("celery"),
            "redis": version("redis"),
            "tritonclient": version("tritonclient"),
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main(
    levels: list[int],
    latency_ms: int,
    out: str | None,
    console: Console,
    scheduling: str = INFLIGHT,
) -> int:
    """Run the bench at ``levels``; print the results and write them to ``out`` (exit code)."""
    if not levels or min(levels) < 1 or latency_ms < 1:
        console.print("[red]concurrency levels and the latency must be positive[/red]")
        return 2
    started = time.monotonic()
    try:
        measured = run(levels, latency_ms, scheduling, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    except (AgentqError, BenchError) as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return 1
    report = {
        "bench": "inference",
        "latency_ms": latency_ms,
        "model_changes": {
            "models": ["ensemble", "ensemble_stream"],
            "delay_ms": latency_ms,
            "max_batch_size": MAX_BATCH_SIZE,
            "scheduling": scheduling,
        },
        **measured,
        "targets": {
            f"ratio_at_c{TARGET_RATIO_AT}_min": TARGET_RATIO,
            "stream_first_token_p50_ms_max": TARGET_FIRST_P50_MS,
            "stream_first_token_p99_ms_max": TARGET_FIRST_P99_MS,
        },
        **environment(),
        "duration_s": round(time.monotonic() - started, 1),
    }
    show(report, console)
    for line in report["worker_log_errors"]:
        console.print(f"[yellow]worker log:[/yellow] {line}")
    path = Path(out) if out else DEFAULT_OUT
    write(report, path)
    console.print(f"bench took {report['duration_s']:.0f} s; results in {path}")
    failed = any(
        (row[side] or {}).get("failed") or (row[side] or {}).get("unfinished")
        for row in report["levels"]
        for side in ("direct", "agentq", "agentq_two_processes")
    )
    return 1 if failed or report["streaming"]["failed"] else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64,256", help="comma-separated levels C")
    parser.add_argument("--latency-ms", type=int, default=200, help="per model call")
    parser.add_argument(
        "--scheduling", choices=SCHEDULING, default=INFLIGHT, help="how the model serves calls"
    )
    parser.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    sys.exit(main(levels, args.latency_ms, args.out, Console(), args.scheduling))
