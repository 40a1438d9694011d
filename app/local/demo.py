"""``agentq demo``: the whole stack on one machine, runs pushed through it, results shown."""

from __future__ import annotations

import itertools
import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.agents.loader import load_registry
from app.agents.registry import AgentRegistry
from app.celery_ext.app import create_celery
from app.config import Settings, mask_url
from app.errors import AgentqError
from app.local import embedding
from app.local.redis import RedisServer
from app.local.triton import TritonServer, install_triton
from app.local.workers import WorkerProcess
from app.memory.migrate import migrate
from app.memory.records import RunStatus
from app.memory.sessions import SessionStore
from app.producer.submit import submit, submit_many

_DIRECTIVE = re.compile(r"\[(tool|delay|error|words):[^\]]*\]")


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _calc(expr: str) -> str:
    return f'Work out {expr}. [tool:calculator {{"expression": "{expr}"}}]'


# Inputs for the scripted model: the bracketed directives tell it which tools to call.
DEMO_INPUTS: dict[str, list[str]] = {
    "research": [
        _calc("17 * 23"),
        _calc("(1 + 2) ** 8"),
        'Count the words of a sentence. [tool:word_count {"text": "agents run on celery workers"}]',
        'Add, then count. [tool:calculator {"expression": "1 + 2 + 3"}] '
        '[tool:word_count {"text": "six words make a short sentence"}]',
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


DEMO_BUSY_RETRY_S = 0.2


def demo_runs(agents: list[str], count: int, model_latency_ms: int = 0) -> list[dict[str, Any]]:
    """``count`` runs spread round-robin over ``agents``, each agent cycling its inputs.

    ``model_latency_ms`` makes each model call of the scripted model take that long, as a
    real LLM call would.
    """
    delay = f" [delay:{model_latency_ms}]" if model_latency_ms > 0 else ""
    cycles = {a: itertools.cycle(DEMO_INPUTS.get(a, ["Say hello."])) for a in agents}
    order = itertools.cycle(agents)
    runs = []
    for i in range(count):
        agent = next(order)
        text = next(cycles[agent]) + delay
        runs.append({"agent": agent, "input": text, "session_id": f"demo-{i % 6}"})
    return runs


def run_demo(
    settings: Settings,
    agents: list[str],
    count: int,
    timeout_s: float,
    console: Console,
    model_latency_ms: int = 0,
) -> bool:
    """Start Redis (unless AGENTQ_REDIS_URL is set), Triton and one worker per agent type; run."""
    with _demo_stack(console) as (stack, tmp):
        registry = load_registry(settings)
        for agent in agents:  # before anything starts
            if agent not in registry:
                raise AgentqError(f"unknown agent {agent!r}; known: {registry.names}")
        settings = _start_services(_waiting_briefly(settings), tmp, stack, console)
        celery, store = _start_workers(settings, registry, agents, tmp, stack, console)
        runs = demo_runs(agents, count, model_latency_ms)
        ok = _push_runs(celery, store, agents, runs, timeout_s, console)
        return _stream_run(celery, agents[0], timeout_s, console) and ok
    return False  # the demo failed: _demo_stack said why


@contextmanager
def _demo_stack(console: Console) -> Iterator[tuple[ExitStack, Path]]:
    """What a demo starts is entered on the stack (with a temp folder beside it); whatever
    happens, all of it is stopped at the end. An AgentqError is the demo failing, in one
    line (the ``with`` block is then skipped past)."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="agentq-demo-")))
        try:
            yield stack, tmp
        except AgentqError as exc:
            console.print(f"[red]demo failed:[/red] {exc}")
        finally:
            with console.status("stopping workers, Triton and Redis"):
                stack.close()
            console.print("[green]✓[/green] everything stopped")


def _waiting_briefly(settings: Settings) -> Settings:
    """The demo pushes every run at once, several to each session, whose runs go one at a
    time: a run whose session is busy tries again after 0.2 s rather than the default 2 s
    (unless AGENTQ_SESSIONS__BUSY_RETRY_S says otherwise)."""
    if "busy_retry_s" in settings.sessions.model_fields_set:
        return settings
    sessions = settings.sessions.model_copy(update={"busy_retry_s": DEMO_BUSY_RETRY_S})
    return settings.model_copy(update={"sessions": sessions})


def _start_workers(
    settings: Settings,
    registry: AgentRegistry,
    agents: list[str],
    tmp: Path,
    stack: ExitStack,
    console: Console,
) -> tuple[Any, SessionStore]:
    """One worker process per agent type, ready; the producer's Celery app and the store."""
    celery = create_celery(settings, registry)
    stack.callback(celery.close)
    with console.status("starting one worker per agent type"):
        workers = [WorkerProcess(settings, [a], log_dir=tmp).spawn() for a in agents]
        stack.callback(_stop_all, workers)
        for worker in workers:
            worker.wait_ready(celery)
            console.print(
                f"[green]✓[/green] worker for [bold]{worker.agents[0]}[/bold] (pid {worker.pid})"
            )
    store = SessionStore.from_url(settings.database_url, migrate=False)
    stack.callback(store.close)
    return celery, store


def _stop_all(workers: list[WorkerProcess]) -> None:
    for worker in workers:  # signal all first: they shut down side by side
        worker.terminate()
    for worker in workers:
        worker.stop()


def _start_services(
    settings: Settings,
    tmp: Path,
    stack: ExitStack,
    console: Console,
    repository: Path | None = None,
    model_name: str = "scripted model",
) -> Settings:
    updates: dict[str, Any] = {}
    if "redis_url" not in settings.model_fields_set:
        redis_server = stack.enter_context(RedisServer())
        updates["redis_url"] = redis_server.url
        console.print(
            f"[green]✓[/green] embedded Redis on {redis_server.url} (pid {redis_server.pid})"
        )
    else:
        where = mask_url(settings.redis_url)
        console.print(f"[green]✓[/green] Redis from AGENTQ_REDIS_URL: {where}")
    if "database_url" not in settings.model_fields_set:
        updates["database_url"] = f"sqlite:///{tmp / 'agentq.sqlite3'}"
    with console.status("installing tritonserver from the nvidia-pytriton wheel (first run only)"):
        home = install_triton(settings.triton.home)
    with console.status(f"starting Triton (CPU, {model_name})"):
        repository = repository or settings.triton.model_repository
        if embedding.available():  # long-term memory's embedding model beside the LLM's
            repository = embedding.repository_with_embedding(repository, tmp / "models")
            model_name += " + minilm embeddings"
        server = TritonServer(home, repository, log_path=tmp / "triton.log")
        server.start()
        stack.callback(server.stop)
    console.print(
        f"[green]✓[/green] Triton on grpc {server.grpc_url} (pid {server.pid}), {model_name}"
    )
    triton = settings.triton.model_copy(update={"urls": [server.grpc_url]})
    updates["triton"] = triton
    merged = settings.model_copy(update=updates)
    # Migrate once here so the workers, starting side by side, find the schema ready.
    migrate(merged.database_url)
    console.print(f"[green]✓[/green] session store {mask_url(merged.database_url)}")
    return merged


def _push_runs(
    celery: Any,
    store: SessionStore,
    agents: list[str],
    runs: list[dict[str, Any]],
    timeout_s: float,
    console: Console,
) -> bool:
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
    steps, tool_calls = _print_results(store, results, console)
    states = Counter(r.state for r in results)
    console.print(
        f"{states.get('SUCCESS', 0)} of {len(results)} runs succeeded in {elapsed:.1f} s "
        f"({len(results) / elapsed:.1f} runs/s): {steps} steps, each a model call answered by "
        f"Triton, {tool_calls} tool calls; states: {dict(states)}"
    )
    return not pending and states.get("SUCCESS", 0) == len(results)


STREAM_INPUT = (
    "Tokens travel from Triton through a Redis stream to this terminal as the model "
    "generates them [pace:60]"
)


def _stream_run(celery: Any, agent: str, timeout_s: float, console: Console) -> bool:
    """One run submitted with stream=True, its tokens printed as they arrive."""
    console.print(f"streaming one [bold]{agent}[/bold] run, tokens as the model generates them:")
    started = time.perf_counter()
    result = submit(agent, STREAM_INPUT, stream=True, celery=celery)
    first: float | None = None
    tokens = []
    for token in result.stream(timeout=timeout_s):
        first = first or time.perf_counter() - started
        tokens.append(token)
        console.out(token, end="", highlight=False)
    console.out("")
    answer = result.get(timeout=timeout_s)
    same = answer == "".join(tokens)
    first_ms = (first or 0) * 1000
    console.print(
        f"[green]✓[/green] streamed {len(tokens)} tokens, the first {first_ms:.0f} ms after "
        f"submit; they make up the run's answer: {'yes' if same else '[red]no[/red]'}"
    )
    return same


def _print_results(
    store: SessionStore, results: Sequence[Any], console: Console
) -> tuple[int, int]:
    table = Table(title="agent runs")
    for name in ("run", "agent", "status"):
        table.add_column(name, no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("tools called")
    wide = console.width >= 120  # the input column only where it fits
    if wide:
        table.add_column("input")
    table.add_column("answer")
    steps = tool_calls = 0
    for result in results:
        run = store.load_run(result.id)
        if run is None:
            table.add_row(result.id[-8:], "?", "queued", "0", "", *([""] * (1 + wide)))
            continue
        tools = [name for s in run.steps for name in s.tools]
        steps, tool_calls = steps + len(run.steps), tool_calls + len(tools)
        answer = _short(str(run.answer if run.answer is not None else run.error or ""))
        question = _short(_DIRECTIVE.sub("", str(run.input)).strip())
        status = run.status if run.status != RunStatus.FAILED else f"[red]{run.status}[/red]"
        row = (run.id[-8:], run.agent, status, str(len(run.steps)), ", ".join(tools) or "-")
        table.add_row(*row, *((question,) if wide else ()), answer)
    console.print(table)
    return steps, tool_calls


LOCAL_AGENTS_MODULE = "app.local.model_agents"


def run_local_demo(settings: Settings, timeout_s: float, console: Console) -> bool:
    """``agentq demo --model local``: the demo's stack with SmolLM2-135M-Instruct (llama.cpp in
    Triton's python backend) instead of the scripted model, asking the questions of
    :mod:`app.local.model_agents`; prints each run's transcript (the model's tool call, the
    tool's result, the answer) and streams one answer."""
    from app.local import llm
    from app.local.model_agents import QUESTIONS

    with _demo_stack(console) as (stack, tmp):
        gguf = llm.gguf_path()  # before anything starts: the llm extra is installed
        with console.status("reading SmolLM2-135M-Instruct's tokenizer and chat template"):
            folder = llm.prepare_model(tmp / "smollm2", gguf)
            repository = llm.llm_repository(tmp / "models", gguf=gguf)
        console.print(
            f"[green]✓[/green] SmolLM2-135M-Instruct ({gguf.stat().st_size >> 20} MiB GGUF)"
        )
        settings = llm.with_local_model(settings, folder).model_copy(
            update={"include": [*settings.include, LOCAL_AGENTS_MODULE]}
        )
        registry = load_registry(settings)
        agents = sorted({q.agent for q in QUESTIONS})
        model_name = "SmolLM2-135M-Instruct on llama.cpp"
        settings = _start_services(settings, tmp, stack, console, repository, model_name)
        celery, store = _start_workers(settings, registry, agents, tmp, stack, console)
        ok = _ask_local(celery, store, timeout_s, console)
        streamed = _stream_local(celery, timeout_s, console)
        return ok and streamed
    return False  # the demo failed: _demo_stack said why


def _ask_local(celery: Any, store: SessionStore, timeout_s: float, console: Console) -> bool:
    """Each question as a run; then the transcript of every run."""
    from app.local.model_agents import QUESTIONS

    started = time.perf_counter()
    runs = [{"agent": q.agent, "input": q.text} for q in QUESTIONS]
    with console.status(f"the model answers {len(runs)} questions"):
        results = submit_many(runs, celery=celery)
        for result in results:
            result.get(timeout=timeout_s, propagate=False)
    elapsed = time.perf_counter() - started
    table = Table(title="SmolLM2-135M-Instruct, through Redis, a worker and Triton")
    for name in ("question", "the model's call", "tool result", "answer", "right call", "tokens"):
        table.add_column(name, overflow="fold")
    right = succeeded = 0
    for question, result in zip(QUESTIONS, results, strict=True):
        run = store.load_run(result.id)
        if run is None:
            table.add_row(question.text, "-", "-", "[red]not run[/red]", "-", "-")
            continue
        calls = [c for step in run.steps for c in step.tool_calls]
        shown = "; ".join(f"{c.name}({_args(c.args)})" for c in calls) or "-"
        results_shown = "; ".join(json.dumps(c.result) for c in calls) or "-"
        correct = any(c.result == question.expected for c in calls)
        right += correct
        succeeded += run.status == RunStatus.SUCCEEDED
        answer = str(run.answer) if run.status == RunStatus.SUCCEEDED else f"[red]{run.error}[/red]"
        tokens = (
            f"{sum(s.tokens_in for s in run.steps)} in, {sum(s.tokens_out for s in run.steps)} out"
        )
        mark = "[green]yes[/green]" if correct else f"[yellow]no[/yellow] ({question.expected})"
        table.add_row(question.text, shown, results_shown, _short(answer, 60), mark, tokens)
    console.print(table)
    console.print(
        f"{succeeded} of {len(results)} runs succeeded in {elapsed:.1f} s; the model's call "
        f"gave the right result in {right} (a 135M model reads numbers and operations off a "
        "question imperfectly; every call is schema-valid, enforced by guided decoding)"
    )
    return succeeded == len(results)


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())


def _stream_local(celery: Any, timeout_s: float, console: Console) -> bool:
    """One run streamed: its answer's tokens as the model generates them."""
    question = "What is 12 times 12?"
    console.print(f"streaming a [bold]math[/bold] run ({question}), the answer as it is generated:")
    result = submit("math", question, stream=True, celery=celery)
    tokens = []
    for token in result.stream(timeout=timeout_s):
        tokens.append(token)
        console.out(token, end="", highlight=False)
    console.out("")
    answer = result.get(timeout=timeout_s)
    same = answer == "".join(tokens).strip() or answer == "".join(tokens)
    console.print(
        f"[green]✓[/green] streamed {len(tokens)} pieces; they make up the run's answer: "
        f"{'yes' if same else '[red]no[/red]'}"
    )
    return same
