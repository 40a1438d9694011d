"""The GPU inference bench: one OpenAI-compatible model server, called (a) directly by an
asyncio httpx client and (b) through agentq (Redis, worker processes, the OpenAI backend),
at each worker concurrency, in one run.

For each concurrency C: (a) C coroutines, each sending one chat completion after another;
(b) one-step agent runs (agent ``gpubench``: backend openai, no tools, so a run is one model
call), submitted all at once to workers of C threads in all (``ceil(C / threads_per_worker)``
processes). Both sides send the same request: the agent's system prompt and the same user
input, as the worker sends them (``request_body``). Figures per side: requests/s, generated
tokens/s (the server's ``usage``; agentq's from its step store), GPU utilisation (nvidia-smi,
"n/a" on a CPU); per level, the ratio agentq / direct.

Started by bench/gpu/run.py, which installs the carried wheels first; see bench/gpu/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa
from celery import Celery
from rich.console import Console
from rich.table import Table

from app.celery_ext.app import create_celery
from app.celery_ext.context import context_of
from app.config import REPO_ROOT, OpenAISettings, ReplicaSettings, Settings
from app.errors import AgentqError
from app.inference.backend import ChatRequest, GenerationParams, Message
from app.inference.openai_wire import error_in_body, model_ids, request_body
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.schema import steps
from bench.gpu.services import GpuSampler, TransformersServer, build_model, server_env
from bench.measure import agent_runs, percentile
from bench.report import environment, ratio, write

AGENT = "gpubench"
INPUT = "Write a short story about a helpful agent."
DEFAULT_LEVELS = (1, 16, 64, 256)
SHAPE_OF = {"1b": "Llama 3.2 1B's shape", "tiny": "a tiny Llama shape (tests)"}


def honesty(size: str) -> str:
    """What a random-weight model's figures do and do not say."""
    return (
        f"random weights: the model has {SHAPE_OF[size]}, so the work per token (hence the "
        "throughput) is a real model's of that shape, but its text is random words; replies "
        "run to max_tokens unless the end token is sampled"
    )


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


# ---- the run ----


def calls_for(concurrency: int, rounds: int) -> int:
    """Calls timed at one level: ``rounds`` rounds of C, at least 8."""
    return max(rounds * concurrency, 8)


def served_model(base_url: str) -> str:
    """The first model an already running server lists."""
    response = httpx.get(f"{base_url}/models", timeout=10)
    response.raise_for_status()
    ids = sorted(model_ids(response.json()) or ())
    if not ids:
        raise AgentqError(f"{base_url}/models lists no model: pass --model")
    return ids[0]


def start_server(
    stack: ExitStack, args: argparse.Namespace, tmp: Path, console: Console
) -> tuple[str, str, dict[str, Any]]:
    """The server's base URL, the model name requests carry, and what was started."""
    if args.server_url:
        base_url = args.server_url.rstrip("/")
        model = args.model or served_model(base_url)
        return base_url, model, {"server": "given", "base_url": base_url}
    env = server_env(args.serve_pythonpath, tmp / "hf")
    with console.status(f"building a random-weight Llama ({args.model_size}) on {args.device}"):
        built = build_model(args.server_python, args.model_size, args.device, tmp / "model", env)
    console.print(f"[green]✓[/green] model: {built['parameters']:,} parameters, {built['dtype']}, "
                  f"built in {built['build_s']} s")  # fmt: skip
    server = TransformersServer(
        args.server_python, tmp / "model", args.device, env, args.out_dir / "server.log",
        tuple(args.serve_arg),
    )  # fmt: skip
    stack.callback(server.stop)
    with console.status("starting transformers serve (continuous batching) and warming it up"):
        server.start()
    console.print(f"[green]✓[/green] transformers serve (pid {server.proc and server.proc.pid}) "
                  f"warm after {server.warm_up_s} s")  # fmt: skip
    return (
        server.base_url,
        server.model,
        {
            "server": "transformers serve --continuous-batching",
            "device": args.device,
            "model": built,
            "warm_up_s": server.warm_up_s,
            "extra_args": list(args.serve_arg),
        },
    )


def level(
    c: int,
    args: argparse.Namespace,
    base_url: str,
    body: dict[str, Any],
    queue: QueueSide,
    gpu: GpuSampler,
    console: Console,
) -> dict[str, Any]:
    """Both sides at concurrency ``c``: their figures and the ratios."""
    calls = calls_for(c, args.rounds)
    console.rule(f"C = {c}: {calls} calls a side")
    with console.status(f"C={c}: direct client"):
        direct = direct_calls(base_url, body, c, calls, args.timeout)
        direct.gpu = gpu.window(*direct.span)
    console.print(_line("direct", direct))
    # The queue side may be slower; never cut it off before several times the direct's.
    timeout = max(args.timeout, 5 * direct.wall_s + 60)
    with console.status(f"C={c}: agent runs through Redis and workers"):
        agentq = queue.runs(c, args.threads_per_worker, calls, timeout, gpu)
    console.print(_line("agentq", agentq))
    a, d = agentq.figures(), direct.figures()
    return {
        "concurrency": c,
        "calls": calls,
        "direct": d,
        "agentq": a,
        "ratio_requests": ratio(a["requests_per_s"], d["requests_per_s"]),
        "ratio_tokens": ratio(a["tokens_per_s"], d["tokens_per_s"]),
    }


def run(args: argparse.Namespace, console: Console, report: dict[str, Any]) -> None:
    """Start the services and measure each level into ``report``, written after each (a run
    cut short still leaves what it measured)."""
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    report.update(levels=rows, skipped_levels=[], complete=False)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-gpu-bench-")))
        gpu = GpuSampler().start()
        stack.callback(gpu.stop)
        base_url, model, report["server"] = start_server(stack, args, tmp, console)
        with console.status("starting Redis"):
            queue = QueueSide(stack, tmp, base_url, model, args.max_tokens)
        report["worker_log_errors"] = queue.log_errors
        body = request_body(model, queue.request(args.max_tokens), stream=False)
        report["request"] = body
        for c in args.concurrency:
            if args.deadline and time.monotonic() - started > args.deadline:
                report["skipped_levels"].append(c)
                console.print(
                    f"[yellow]C={c} skipped: past --deadline {args.deadline:g} s[/yellow]"
                )
                continue
            rows.append(level(c, args, base_url, body, queue, gpu, console))
            write(report, args.out_dir / "gpu.json")
        with console.status("stopping workers, the server and Redis"):
            stack.close()
    report["complete"] = not report["skipped_levels"]


def _gpu_text(gpu: Any) -> str:
    if not isinstance(gpu, dict) or "util_mean_pct" not in gpu:
        return "n/a"
    return f"{gpu['util_mean_pct']:.0f}% (max {gpu['util_max_pct']:.0f}%)"


def _line(name: str, side: Side) -> str:
    f = side.figures()
    failed = f", [red]{side.failed} failed: {side.error}[/red]" if side.failed else ""
    return (
        f"  {name:>7}: {f['requests_per_s']} req/s, {f['tokens_per_s']} tokens/s, "
        f"{side.calls} calls in {side.wall_s:.2f} s, GPU {_gpu_text(f['gpu'])}{failed}"
    )


def show(report: dict[str, Any], console: Console) -> None:
    """The results table: per level and side, requests/s, tokens/s, GPU; the ratios."""
    table = Table(title=f"direct client vs agentq, {report['max_tokens']} tokens a reply")
    for name in ("C", "side", "req/s", "tokens/s", "p50 ms", "GPU util", "failed", "ratio"):
        table.add_column(name, justify="right")
    for row in report["levels"]:
        for side in ("direct", "agentq"):
            f = row[side]
            r = row["ratio_tokens"] if side == "agentq" else None
            table.add_row(
                str(row["concurrency"]) if side == "direct" else "",
                side,
                f"{f['requests_per_s']}",
                f"{f['tokens_per_s']}",
                f"{f['p50_ms']}" if f["p50_ms"] is not None else "—",
                _gpu_text(f["gpu"]),
                str(f["failed"]),
                f"{r:.2f}" if r is not None else "",
            )
    console.print(table)
    console.print("ratio: agentq tokens/s over direct tokens/s at the same concurrency")
    if report["honesty"]:
        console.print(f"[yellow]{report['honesty']}[/yellow]")


def plot(report: dict[str, Any], path: Path) -> Path | None:
    """tokens/s of both sides and the GPU utilisation per level (PNG); None without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [row["concurrency"] for row in report["levels"]]
    fig, (ax, ax_gpu) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for side, color in (("direct", "#ff7f0e"), ("agentq", "#1f77b4")):
            values = [row[side]["tokens_per_s"] or 0 for row in report["levels"]]
            ax.plot(levels, values, marker="o", color=color, label=side)
            util = [
                row[side]["gpu"].get("util_mean_pct")
                if isinstance(row[side]["gpu"], dict)
                else None
                for row in report["levels"]
            ]
            if any(u is not None for u in util):
                ax_gpu.plot(levels, [u or 0 for u in util], marker="o", color=color, label=side)
        for a in (ax, ax_gpu):
            a.set_xscale("log", base=2)
            a.set_xlabel("concurrency (direct coroutines / worker threads)")
            if a.lines:
                a.legend()
        ax.set_ylabel("generated tokens / s")
        ax.set_ylim(bottom=0)
        ax.set_title("throughput")
        ax_gpu.set_ylabel("GPU utilisation, mean %")
        ax_gpu.set_title("GPU utilisation" if report["gpu_sampled"] else "GPU: n/a (no nvidia-smi)")
        server = report["server"]
        model = server.get("model") or {}
        what = (
            f"{server['server']}, random-weight Llama ({model['size']}, {model['dtype']})"
            if model
            else f"the server at {server['base_url']}"
        )
        fig.text(0.01, 0.01, f"{what} on {report['device']}, {report['max_tokens']} tokens a "
                 f"reply, {report['date']}", fontsize=7, color="#7f7f7f")  # fmt: skip
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def levels(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency levels are positive integers: 1,16,64")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="where the model runs: cuda or cpu")
    p.add_argument("--concurrency", type=levels, default=list(DEFAULT_LEVELS))
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--rounds", type=int, default=4, help="calls timed per level: rounds x C")
    p.add_argument("--model-size", choices=("tiny", "1b"), default="1b")
    p.add_argument("--server-url", help="an OpenAI-compatible server already running "
                   "(http://host:port/v1) instead of starting transformers serve")  # fmt: skip
    p.add_argument("--model", help="model name to request (default: the server's first)")
    p.add_argument(
        "--server-python",
        default=sys.executable,
        help="Python with torch and transformers that builds and serves the model",
    )
    p.add_argument("--serve-pythonpath", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="extra argument of transformers serve (repeat), e.g. --cb-num-blocks=256",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=64,
        help="threads per worker process (C above this: several processes)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="deadline of one model call, s")
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds after which levels not yet started are skipped",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path(os.environ.get("OUT") or REPO_ROOT / "bench" / "results" / "gpu"),
    )
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report: dict[str, Any] = {
        "bench": "gpu_inference",
        "device": args.device,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "gpu_sampled": GpuSampler().available,
        "honesty": None if args.server_url else honesty(args.model_size),
        **environment(REPO_ROOT),
    }
    try:
        run(args, console, report)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    except AgentqError as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return 1
    report["duration_s"] = round(time.monotonic() - started, 1)
    write(report, args.out_dir / "gpu.json")
    show(report, console)
    drawn = plot(report, args.out_dir / "gpu.png")
    console.print(f"results: {args.out_dir / 'gpu.json'}" + (f", {drawn}" if drawn else ""))
    failed = sum(row[s]["failed"] for row in report["levels"] for s in ("direct", "agentq"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
