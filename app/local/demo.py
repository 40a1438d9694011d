"""``agentq demo``: the whole stack on one machine, runs pushed through it, results shown."""

from __future__ import annotations

import itertools
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.celery_app import create_celery
from app.config import Settings
from app.errors import AgentqError
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.local.workers import WorkerProcess
from app.memory.sessions import SessionStore
from app.producer import submit_many


def _calc(expr: str) -> str:
    return f'Work out {expr}. [tool:calculator {{"expression": "{expr}"}}]'


# Inputs for the scripted model: the bracketed directives tell it which tools to call.
DEMO_INPUTS: dict[str, list[str]] = {
    "research": [
        _calc("17 * 23"),
        _calc("(1 + 2) ** 8"),
        'Count the words of a sentence. [tool:word_count {"text": "agents run on celery workers"}]',
        'Look up the release. [tool:kv_set {"key": "release", "value": "v1"}] '
        '[tool:kv_get {"key": "release"}]',
        "Summarise why queues decouple producers from workers.",
    ],
    "coder": [
        "Record the build number, then read it back. "
        '[tool:kv_set {"key": "build", "value": "1042"}] [tool:kv_get {"key": "build"}]',
        _calc("2 ** 16 - 1"),
        'Compute, count, compute. [tool:calculator {"expression": "6 * 7"}] '
        '[tool:word_count {"text": "one two three"}] [tool:calculator {"expression": "40 + 2"}]',
        "Explain what an idempotent step is.",
    ],
}


def demo_runs(agents: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` runs spread round-robin over ``agents``, each agent cycling its inputs."""
    cycles = {a: itertools.cycle(DEMO_INPUTS.get(a, ["Say hello."])) for a in agents}
    order = itertools.cycle(agents)
    runs = []
    for i in range(count):
        agent = next(order)
        runs.append({"agent": agent, "input": next(cycles[agent]), "session_id": f"demo-{i % 6}"})
    return runs


def run_demo(
    settings: Settings, agents: list[str], count: int, timeout_s: float, console: Console
) -> bool:
    """Start Redis (unless AGENTQ_REDIS_URL is set), Triton and one worker per agent type; run."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-demo-")))
        try:
            settings = _start_services(settings, tmp, stack, console)
            celery = create_celery(settings)
            stack.callback(celery.close)
            for agent in agents:
                if agent not in celery.agentq_registry:
                    raise AgentqError(
                        f"unknown agent {agent!r}; known: {celery.agentq_registry.names}"
                    )
            with console.status("starting one worker per agent type"):
                for agent in agents:
                    worker = WorkerProcess(settings, [agent], log_dir=tmp).start(celery)
                    stack.callback(worker.stop)
                    console.print(
                        f"[green]✓[/green] worker for [bold]{agent}[/bold] (pid {worker.pid})"
                    )
            store = SessionStore.from_url(settings.database_url, migrate=False)
            stack.callback(store.close)
            return _push_runs(celery, store, agents, count, timeout_s, console)
        except AgentqError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
            return False
        finally:
            with console.status("stopping workers, Triton and Redis"):
                stack.close()
            console.print("[green]✓[/green] everything stopped")


def _start_services(settings: Settings, tmp: Path, stack: ExitStack, console: Console) -> Settings:
    updates: dict[str, Any] = {}
    if "redis_url" not in settings.model_fields_set:
        redis_server = stack.enter_context(RedisServer())
        updates["redis_url"] = redis_server.url
        console.print(
            f"[green]✓[/green] embedded Redis on {redis_server.url} (pid {redis_server.pid})"
        )
    else:
        console.print(f"[green]✓[/green] Redis from AGENTQ_REDIS_URL: {settings.redis_url}")
    if "database_url" not in settings.model_fields_set:
        updates["database_url"] = f"sqlite:///{tmp / 'agentq.sqlite3'}"
    with console.status("installing tritonserver from the nvidia-pytriton wheel (first run only)"):
        home = install_triton(settings.triton.home)
    with console.status("starting Triton (CPU, scripted model)"):
        server = TritonServer(home, settings.triton.model_repository, log_path=tmp / "triton.log")
        server.start()
        stack.callback(server.stop)
    console.print(f"[green]✓[/green] Triton on grpc {server.grpc_url} (pid {server.pid})")
    triton = settings.triton.model_copy(update={"urls": [server.grpc_url]})
    updates["triton"] = triton
    # Force a fresh Settings so that the changed URLs count as explicitly set.
    merged = settings.model_copy(update=updates)
    from app.memory.migrate import migrate

    migrate(merged.database_url)
    console.print(f"[green]✓[/green] session store {merged.database_url}")
    return merged


def _push_runs(
    celery: Any,
    store: SessionStore,
    agents: list[str],
    count: int,
    timeout_s: float,
    console: Console,
) -> bool:
    runs = demo_runs(agents, count)
    started = time.perf_counter()
    results = submit_many(runs, celery=celery)
    console.print(f"[green]✓[/green] submitted {len(results)} runs with submit_many (one pipeline)")
    agent_of = {r.id: run["agent"] for r, run in zip(results, runs, strict=True)}
    pending = set(agent_of)
    done: Counter[str] = Counter()
    columns = (
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bars = {
            a: progress.add_task(a, total=sum(1 for r in runs if r["agent"] == a)) for a in agents
        }
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for result in [r for r in results if r.id in pending]:
                if result.ready():
                    pending.discard(result.id)
                    done[agent_of[result.id]] += 1
                    progress.update(bars[agent_of[result.id]], completed=done[agent_of[result.id]])
            time.sleep(0.1)
    elapsed = time.perf_counter() - started
    _print_results(store, results, console)
    states = Counter(r.state for r in results)
    console.print(
        f"{states.get('SUCCESS', 0)} of {len(results)} runs succeeded in {elapsed:.1f} s "
        f"({len(results) / elapsed:.1f} runs/s); states: {dict(states)}"
    )
    return not pending and states.get("SUCCESS", 0) == len(results)


def _print_results(store: SessionStore, results: list[Any], console: Console) -> None:
    table = Table("run", "agent", "status", "steps", "tools called", "answer", title="agent runs")
    for result in results:
        run = store.load_run(result.id)
        if run is None:
            table.add_row(result.id[:8], "?", "queued", "0", "", "")
            continue
        tools = ", ".join(s.tool for s in run.steps if s.tool) or "-"
        answer = str(run.answer if run.answer is not None else run.error or "")
        table.add_row(run.id[:8], run.agent, run.status, str(len(run.steps)), tools, answer[:60])
    console.print(table)
