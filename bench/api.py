"""The HTTP run API against Python, side by side in one run: ``agentq bench api``.

On one stack (Redis, SQLite, Triton on CPU with the scripted model, one worker process) and a
real ``agentq api`` process (uvicorn, one process) on a free port:

- **submit**: ``POST /v1/runs`` and ``submit()`` at the same fixed offered load, open loop:
  request i is sent at ``i / rate`` whether or not earlier ones were answered (HTTP: asyncio
  tasks on one keep-alive client; Python: a thread pool), and its latency runs from that
  scheduled time to its answer, so a backlog shows as latency rather than a slower sender.
  No worker runs meanwhile: what is timed is accepting and enqueueing.
- **relay**: streamed runs read over ``GET /v1/runs/{id}/events`` (SSE) and with the Python
  ``stream()`` reader (``events()``), alternately; per token, the reader's clock when the
  event arrived minus the stream entry id's milliseconds (when Redis stored the worker's
  write), and the first token after the submit call.

With API keys (``api.auth``), the HTTP side sends a real key made for the bench, so the key's
check is part of what is timed; without them it runs with none. ``python -m bench.api``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from celery import Celery
from rich.console import Console

from app.celery_ext.app import create_celery
from app.config import REPO_ROOT, Settings, TritonSettings, child_env, settings_env
from app.errors import AgentqError
from app.local.processes import free_port, log_tail, stop_process, wait_until
from app.local.redis import RedisServer
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.producer.submit import submit
from app.tasks.relay import END, TOKEN
from bench.api_report import NOISE, SIDES, plot, show
from bench.memory import start_triton
from bench.report import environment, latency_summary, ratio, write
from bench.services import cpu_seconds

AGENT = "bench"
SUBMIT_INPUT = "What is the capital of France?"
PYTHON_THREADS = 64  # submit() callers in flight at most (HTTP: connections in the pool)
WORKER_CONCURRENCY = 4
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "api.json"


class ApiBenchError(AgentqError):
    """Raised when the bench's stack cannot start or a run does not finish."""


@dataclass(frozen=True)
class Plan:
    """What one bench run offers: the submit load and the streamed runs."""

    rates: tuple[float, ...] = (50.0, 200.0)  # submits per second offered, each side in turn
    seconds: float = 10.0  # how long each side is offered each rate
    streams: int = 20  # streamed runs read each way
    words: int = 40  # tokens per streamed run
    pace_ms: int = 10  # between two tokens, as the scripted model decodes them

    def submits(self, rate: float) -> int:
        return max(1, round(rate * self.seconds))

    @property
    def stream_input(self) -> str:
        return f"[words:{self.words}] [pace:{self.pace_ms}] stream please"


# ---- the stack ----


class ApiProcess:
    """``agentq api`` on a free port as a child process, stopped by PID."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = child_env({**settings_env(settings), "AGENTQ_API__PORT": str(self.port)})
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "api"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, deadline_s: float = 60.0) -> ApiProcess:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        if not wait_until(ready, deadline_s, self.proc):
            self.stop()
            raise ApiBenchError(f"agentq api did not start:\n{log_tail(self.log_path)}")
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc)


def api_key(settings: Settings) -> str | None:
    """A key with the submit and read scopes when the API checks keys, else None."""
    if settings.api.auth == "none":
        return None
    from app.memory.api_keys import ApiKeyStore

    keys = ApiKeyStore.from_url(settings.database_url, migrate=False)
    try:
        return keys.create(["submit", "read"], name="bench")[1]
    finally:
        keys.close()


@dataclass
class Stack:
    settings: Settings
    celery: Celery
    redis: redis.Redis
    api: ApiProcess
    key: str | None
    tmp: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def start_stack(stack: ExitStack, tmp: Path) -> Stack:
    """Redis, SQLite, Triton and ``agentq api``, each stopped with ``stack``."""
    server = RedisServer()
    stack.callback(server.cleanup)
    server.start()
    triton = start_triton(stack, tmp)
    agents = tmp / "agents.yaml"
    agents.write_text(f"agents:\n  - name: {AGENT}\n    max_steps: 2\n    max_tokens: 256\n")
    database_url = f"sqlite:///{tmp / 'agentq.sqlite3'}"
    migrate(database_url)
    settings = Settings(
        redis_url=server.url,
        database_url=database_url,
        agents_file=agents,
        triton=TritonSettings(urls=[triton.grpc_url]),
    )
    celery = create_celery(settings)
    stack.callback(celery.close)
    client = redis.Redis.from_url(server.url)
    stack.callback(client.close)
    key = api_key(settings)
    api = ApiProcess(settings, tmp / "api.log")
    stack.callback(api.stop)
    api.wait_ready()
    return Stack(settings, celery, client, api, key, tmp)


# ---- (a) submit at a fixed offered load ----


@dataclass
class OpenLoop:
    """What an open-loop side saw: each answered call's latency from its scheduled send, and
    the wall time from the first scheduled send to the last answer (at least the schedule's
    length, so the achieved rate never reads above the offered one)."""

    latencies: list[float]
    failed: int
    errors: list[str]
    wall_s: float

    def summary(self, sent: int) -> dict[str, Any]:
        ok = len(self.latencies)
        return {
            "sent": sent,
            "answered": ok,
            "failed": self.failed,
            "errors": self.errors[:3],
            "wall_s": round(self.wall_s, 3),
            "achieved_per_s": round(ok / self.wall_s, 1) if self.wall_s > 0 else None,
            "latency": latency_summary(self.latencies),
        }


async def open_loop(count: int, rate: float, call: Callable[[], Awaitable[None]]) -> OpenLoop:
    """``call`` ``count`` times, the i-th at ``i / rate`` s, none waiting for another."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    result = OpenLoop([], 0, [], 0.0)

    async def one(due: float) -> None:
        try:
            await call()
        except Exception as exc:  # a refused call is a figure of the side, not a crash
            result.failed += 1
            result.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        else:
            result.latencies.append(loop.time() - due)

    tasks = []
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    result.wall_s = max(loop.time() - start, count / rate)
    return result


async def http_submits(s: Stack, count: int, rate: float) -> OpenLoop:
    body = {"agent": AGENT, "input": SUBMIT_INPUT}
    limits = httpx.Limits(max_connections=PYTHON_THREADS, max_keepalive_connections=PYTHON_THREADS)
    async with httpx.AsyncClient(
        base_url=s.api.url, headers=s.headers, limits=limits, timeout=60
    ) as client:

        async def post() -> None:
            response = await client.post("/v1/runs", json=body)
            if response.status_code != 202:
                raise ApiBenchError(f"HTTP {response.status_code}: {response.text[:120]}")

        for _ in range(PYTHON_THREADS // 8):  # open some connections first: not timed
            await post()
        return await open_loop(count, rate, post)


async def python_submits(s: Stack, count: int, rate: float) -> OpenLoop:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(PYTHON_THREADS, thread_name_prefix="bench-submit") as pool:

        def one() -> None:
            submit(AGENT, SUBMIT_INPUT, celery=s.celery)

        async def call() -> None:
            await loop.run_in_executor(pool, one)

        for _ in range(PYTHON_THREADS // 8):
            await call()
        return await open_loop(count, rate, call)


def _cpu_ms(pid: int, side: Callable[[], OpenLoop], count: int) -> dict[str, Any]:
    """``side``'s figures, with the CPU the caller (this process) and ``pid`` spent per call."""
    caller, server = time.process_time(), cpu_seconds(pid) or 0.0
    figures = side().summary(count)
    answered = max(1, figures["answered"])
    figures["caller_cpu_ms_per_call"] = round((time.process_time() - caller) * 1000 / answered, 3)
    figures["api_cpu_ms_per_call"] = round(
        ((cpu_seconds(pid) or server) - server) * 1000 / answered, 3
    )
    return figures


def submit_level(s: Stack, plan: Plan, rate: float) -> dict[str, Any]:
    """Both sides at ``rate`` offered, one after the other, the queue emptied between."""
    count = plan.submits(rate)
    s.redis.flushdb()
    pid = s.api.proc.pid
    python = _cpu_ms(pid, lambda: asyncio.run(python_submits(s, count, rate)), count)
    s.redis.flushdb()
    http = _cpu_ms(pid, lambda: asyncio.run(http_submits(s, count, rate)), count)
    s.redis.flushdb()
    return {
        "offered_per_s": rate,
        "http": {**http, "how": "POST /v1/runs, httpx.AsyncClient, keep-alive, open loop"},
        "python": {**python, "how": f"submit(), {PYTHON_THREADS} threads, open loop"},
        "ratio_achieved": ratio(http["achieved_per_s"], python["achieved_per_s"]),
        "ratio_p50": ratio(http["latency"]["p50_ms"], python["latency"]["p50_ms"]),
        "ratio_p99": ratio(http["latency"]["p99_ms"], python["latency"]["p99_ms"]),
    }


# ---- (b) the token relay ----


@dataclass
class Relay:
    """Per token: the reader's clock minus the entry's Redis time; per run, the first token
    after the submit call."""

    runs: int = 0
    failed: int = 0
    per_token_s: list[float] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)

    def add(self, submitted: float, tokens: list[tuple[float, str]], status: str | None) -> None:
        """One run: ``tokens`` as (reader's Unix time, stream entry id), and how it ended."""
        self.runs += 1
        if status != "succeeded" or not tokens:
            self.failed += 1
            return
        self.per_token_s += [now - int(entry.split("-", 1)[0]) / 1000 for now, entry in tokens]
        self.first_token_s.append(tokens[0][0] - submitted)

    def summary(self) -> dict[str, Any]:
        per_token = latency_summary(self.per_token_s)
        first = latency_summary(self.first_token_s)
        return {
            "runs": self.runs,
            "failed": self.failed,
            "tokens": per_token["count"],
            "per_token": per_token,
            "first_token_after_submit": first,
        }


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, str, str]]:
    """(event, id, data) of each event of a ``text/event-stream`` body as its block ends."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields:
                yield fields.get("event", "message"), fields.get("id", ""), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def http_stream(client: httpx.Client, text: str, out: Relay) -> None:
    submitted = time.time()
    body = {"agent": AGENT, "input": text, "stream": True}
    accepted = client.post("/v1/runs", json=body)
    if accepted.status_code != 202:
        raise ApiBenchError(f"POST /v1/runs: HTTP {accepted.status_code}: {accepted.text[:200]}")
    tokens: list[tuple[float, str]] = []
    status = None
    with client.stream("GET", accepted.json()["links"]["events"]) as response:
        for event, entry, data in sse_events(response.iter_lines()):
            if event == TOKEN:
                tokens.append((time.time(), entry))
            elif event == END:
                status = json.loads(data).get("status")
                break
    out.add(submitted, tokens, status)


def python_stream(s: Stack, text: str, out: Relay) -> None:
    submitted = time.time()
    result = submit(AGENT, text, stream=True, celery=s.celery)
    tokens: list[tuple[float, str]] = []
    status = None
    for event in result.events(timeout=60):
        if event.kind == TOKEN:
            tokens.append((time.time(), event.id))
        elif event.kind == END:
            status = (event.data or {}).get("status")
    out.add(submitted, tokens, status)


def relay(s: Stack, plan: Plan) -> dict[str, Any]:
    """``plan.streams`` streamed runs each way, alternating, one at a time, on one worker."""
    http, python = Relay(), Relay()
    with ExitStack() as stack:
        worker = WorkerProcess(
            s.settings, [AGENT], log_dir=s.tmp, concurrency=WORKER_CONCURRENCY
        ).spawn()
        stack.callback(worker.stop)
        worker.wait_ready(s.celery)
        client = stack.enter_context(
            httpx.Client(base_url=s.api.url, headers=s.headers, timeout=60)
        )
        text = plan.stream_input
        http_stream(client, text, Relay())  # warm-up: connections, the model's first call
        python_stream(s, text, Relay())
        for _ in range(plan.streams):
            http_stream(client, text, http)
            python_stream(s, text, python)
    h, p = http.summary(), python.summary()
    return {
        "input": plan.stream_input,
        "http": {**h, "how": "POST, then GET /v1/runs/{id}/events (SSE) with httpx"},
        "python": {**p, "how": "submit(stream=True), then its events() reader"},
        "note": "per token: reader's clock minus the stream entry id's ms (1 ms resolution)",
        "ratio_p50": ratio(h["per_token"]["p50_ms"], p["per_token"]["p50_ms"]),
        "ratio_p99": ratio(h["per_token"]["p99_ms"], p["per_token"]["p99_ms"]),
    }


def run(plan: Plan, console: Console) -> dict[str, Any]:
    """Start the stack, measure both parts, stop everything; the figures."""
    with tempfile.TemporaryDirectory(prefix="agentq-bench-api-") as tmp, ExitStack() as stack:
        console.print("starting Redis, Triton (scripted model) and agentq api ...")
        s = start_stack(stack, Path(tmp))
        auth = "API key (submit, read)" if s.key else "none (api.auth none)"
        levels = []
        for rate in plan.rates:
            console.print(f"submit: {plan.submits(rate)} each way at {rate:g}/s offered ...")
            levels.append(submit_level(s, plan, rate))
        console.print(f"relay: {plan.streams} streamed runs of {plan.words} tokens each way ...")
        relay_figures = relay(s, plan)
        api_exit = s.api.stop()
        lines = s.api.log_path.read_text(errors="replace").splitlines()
    return {
        "auth": auth,
        "api_process": "agentq api: uvicorn, 1 process, on a free port; stopped by PID",
        "api_exit": api_exit,
        "api_log_errors": [line for line in lines if "ERROR" in line or "Error" in line][:5],
        "submit": {"seconds": plan.seconds, "levels": levels},
        "relay": relay_figures,
    }


def main(plan: Plan, out: str | None, console: Console) -> int:
    """Run the bench; print the table, write the JSON and the PNG beside it (exit code)."""
    started = time.monotonic()
    machine = environment(REPO_ROOT)  # the load average before the bench adds its own
    try:
        measured = run(plan, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; every process the bench started is stopped[/yellow]")
        return 130
    except AgentqError as exc:
        console.print(f"[red]bench failed:[/red] {exc}")
        return 1
    report = {
        "bench": "api",
        "plan": asdict(plan),
        **measured,
        "noise": NOISE,
        **machine,
        "duration_s": round(time.monotonic() - started, 1),
    }
    show(report, console)
    path = Path(out) if out else DEFAULT_OUT
    write(report, path)
    png = plot(report, path.with_suffix(".png"))
    console.print(f"bench took {report['duration_s']:.0f} s; results in {path}, plot in {png}")
    figures = [level[k] for level in measured["submit"]["levels"] for k in SIDES]
    figures += [measured["relay"][k] for k in SIDES]
    return 1 if any(f["failed"] for f in figures) else 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in Plan.rates))
    parser.add_argument("--seconds", type=float, default=Plan.seconds)
    parser.add_argument("--streams", type=int, default=Plan.streams)
    parser.add_argument("--words", type=int, default=Plan.words)
    parser.add_argument("--out", default=None, help=f"JSON results (default {DEFAULT_OUT})")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse(None)
    rates = tuple(float(r) for r in args.rates.split(","))
    sys.exit(main(Plan(rates, args.seconds, args.streams, args.words), args.out, Console()))
