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
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from app.config import REPO_ROOT
from app.errors import AgentqError
from app.inference.openai_wire import model_ids, request_body
from bench.gpu.figures import line, plot, show
from bench.gpu.services import GpuSampler, TransformersServer, build_model, server_env
from bench.gpu.sides import QueueSide, direct_calls
from bench.report import environment, ratio, write

DEFAULT_LEVELS = (1, 16, 64, 256)
MIN_CALLS, MAX_CALLS = 8, 512
SHAPE_OF = {"1b": "Llama 3.2 1B's shape", "tiny": "a tiny Llama shape (tests)"}


def honesty(size: str) -> str:
    """What a random-weight model's figures do and do not say."""
    return (
        f"random weights: the model has {SHAPE_OF[size]}, so the work per token (hence the "
        "throughput) is a real model's of that shape, but its text is random words; replies "
        "run to max_tokens unless the end token is sampled"
    )


# ---- the run ----


def calls_for(concurrency: int, rounds: int) -> int:
    """Calls timed at one level: ``rounds`` rounds of C, at least MIN_CALLS, and at most
    MAX_CALLS unless C is more (so that C = 256 fits the device's time)."""
    return min(max(rounds * concurrency, MIN_CALLS), max(MAX_CALLS, concurrency))


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
    console.print(line("direct", direct))
    # The queue side may be slower; never cut it off before several times the direct's.
    timeout = max(args.timeout, 5 * direct.wall_s + 60)
    with console.status(f"C={c}: agent runs through Redis and workers"):
        agentq = queue.runs(c, args.threads_per_worker, calls, timeout, gpu)
    console.print(line("agentq", agentq))
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
    p.add_argument("--rounds", type=int, default=4, help="calls a level: rounds x C, 8..512")
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
