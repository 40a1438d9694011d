"""The ``agentq`` command line."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from app import logs
from app.config import Settings

console = Console()


@click.group()
def main() -> None:
    """agentq: run AI agents at scale on Celery."""


@main.command()
@click.option(
    "--agents",
    "agents",
    default=None,
    help="Comma-separated agent types (default: AGENTQ_WORKER__AGENTS, else all).",
)
@click.option("--concurrency", "-c", type=int, default=None, help="Runs in flight per process.")
@click.option("--pool", "-P", default=None, help="Celery pool (default: threads).")
@click.option("--hostname", "-n", default=None, help="Worker node name.")
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def worker(
    agents: str | None,
    concurrency: int | None,
    pool: str | None,
    hostname: str | None,
    loglevel: str,
) -> None:
    """Consume the queues of AGENTS' types and run their steps."""
    from celery.utils.nodenames import host_format
    from pydantic import ValidationError

    from app.celery_app import create_celery
    from app.errors import AgentqError, ConfigurationError
    from app.redis_client import check_redis
    from app.tasks.runtime import runtime_for

    try:
        settings = Settings()
    except (ConfigurationError, ValidationError) as exc:  # e.g. a secret file that is not there
        raise click.ClickException(str(exc)) from None
    logs.configure(settings.log_format, loglevel)
    app = create_celery(settings)
    registry = app.agentq_registry
    agents = agents or settings.worker.agents  # the flag wins over the environment
    names = [a.strip() for a in agents.split(",") if a.strip()] if agents else registry.names
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise click.BadParameter(f"unknown agent types {unknown}; known: {registry.names}")
    queues = ",".join(registry.get(n).queue_name for n in names)
    node = host_format(hostname or f"agentq-{'-'.join(names)}@%h")
    try:
        # Connect and migrate now: a bad config (password, TLS, URL) fails at start, not per run.
        check_redis(settings)
        runtime_for(app, node)
    except AgentqError as exc:  # configuration, Redis, session store: one line, no traceback
        raise click.ClickException(str(exc)) from None
    if not settings.worker.log_each_step:
        # Celery's "received" and "succeeded"/"ignored" INFO lines: two per step, ~8% of a
        # busy worker's CPU; Flower, metrics and the session store say the same.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    app.worker_main(
        [
            *(["--quiet"] if settings.log_format == "json" else []),  # no banner amid JSON
            "worker",
            "-Q", queues,
            "-P", pool or settings.worker.pool,
            "-c", str(concurrency or settings.worker.concurrency),
            "-n", node,
            "-l", loglevel,
            "--without-mingle",
            "--without-gossip",
        ]
    )  # fmt: skip


@main.command()
def flower() -> None:
    """Flower on the broker; basic auth from AGENTQ_FLOWER__BASIC_AUTH is required."""
    from app.errors import ConfigurationError
    from app.flower import run_flower

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
def submit(
    agent: str,
    text: str,
    session_id: str | None,
    wait: bool,
    stream: bool,
    idempotency_key: str | None,
    timeout: float,
) -> None:
    """Submit one run of AGENT with input TEXT (JSON objects are parsed)."""
    from app.errors import SubmitError
    from app.producer import submit as submit_run

    run_input: object = text
    if text.lstrip().startswith(("{", "[")):
        with contextlib.suppress(json.JSONDecodeError):
            run_input = json.loads(text)
    try:
        result = submit_run(
            agent, run_input, session_id, stream=stream, idempotency_key=idempotency_key
        )
    except SubmitError as exc:
        console.print(f"[red]refused:[/red] {exc}")
        sys.exit(2)
    console.print(f"run [bold]{result.id}[/bold] queued", highlight=False)
    if stream:
        _print_stream(result, timeout)
    if wait or stream:
        console.print(result.get(timeout=timeout))


def _print_stream(result: Any, timeout: float) -> None:
    """Tokens as they come, each step on its own line; a restarted step is marked."""
    from app.streaming import ATTEMPT, STEP, TOKEN

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
def status(agent: str | None, limit: int) -> None:
    """Show recent runs from the session store."""
    from app.memory.sessions import SessionStore

    store = SessionStore.from_url(Settings().database_url, migrate=False)
    table = Table("run", "agent", "status", "steps", "answer / error")
    for run in store.list_runs(agent=agent, limit=limit):
        table.add_row(
            run.id, run.agent, run.status, str(run.next_step), str(run.answer or run.error or "")
        )
    console.print(table)


@main.command()
@click.option("--port", type=int, default=None, help="Port of /metrics (default: exporter.port).")
def exporter(port: int | None) -> None:
    """Serve every agent queue's true backlog and the DLQ size to Prometheus and KEDA."""
    from app.exporter import run_exporter

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
def dlq() -> None:
    """Dead-lettered runs (retries exhausted), kept with their reason."""


def _dlq_client() -> Any:
    from app.redis_client import redis_client

    return redis_client(Settings())


@dlq.command("list")
@click.option("--agent", default=None, help="Only this agent type's runs.")
@click.option("--limit", type=int, default=50, show_default=True)
def dlq_list(agent: str | None, limit: int) -> None:
    """The newest dead-lettered runs."""
    import datetime

    from app import dlq as dead

    client = _dlq_client()
    table = Table("run", "agent", "step", "kind", "retries", "failed at", "reason")
    for letter in dead.list_letters(client, limit, agent):
        when = datetime.datetime.fromtimestamp(letter.failed_at, datetime.UTC)
        table.add_row(
            letter.run_id,
            letter.agent,
            str(letter.step),
            letter.kind,
            str(letter.retries),
            when.strftime("%Y-%m-%d %H:%M:%S"),
            letter.reason,
        )
    console.print(table)
    console.print(f"{dead.count(client)} dead-lettered run(s) in all")


@dlq.command("show")
@click.argument("run_id")
def dlq_show(run_id: str) -> None:
    """One dead letter: reason, traceback and the step's arguments (JSON, secrets masked)."""
    from dataclasses import asdict

    from app import dlq as dead
    from app.masking import masked

    letter = dead.get(_dlq_client(), run_id)
    if letter is None:
        raise click.ClickException(f"run {run_id} is not in the dead-letter queue")
    shown = {**asdict(letter), "kwargs": masked(letter.kwargs)}  # replay uses the stored ones
    click.echo(json.dumps(shown, indent=2))


def _chosen(client: Any, run_ids: tuple[str, ...], all_: bool, agent: str | None) -> list[str]:
    from app import dlq as dead

    if bool(run_ids) == all_:
        raise click.UsageError("name RUN_IDs or pass --all (not both)")
    if run_ids:
        return list(run_ids)
    return [letter.run_id for letter in dead.list_letters(client, dead.count(client), agent)]


@dlq.command("replay")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --agent, if given).")
@click.option("--agent", default=None, help="With --all: only this agent type's runs.")
def dlq_replay(run_ids: tuple[str, ...], all_: bool, agent: str | None) -> None:
    """Send dead-lettered runs back to their queues; they resume at the step that failed."""
    from app.celery_app import create_celery
    from app.errors import NotDeadLetteredError
    from app.memory.sessions import SessionStore
    from app.tasks.dead_letters import replay

    settings = Settings()
    client = _dlq_client()
    celery = create_celery(settings)
    store = SessionStore.from_url(settings.database_url, migrate=False)
    failed = 0
    try:
        for run_id in _chosen(client, run_ids, all_, agent):
            try:
                letter = replay(celery, celery.agentq_registry, store, client, run_id)
            except NotDeadLetteredError as exc:
                console.print(f"[red]skipped:[/red] {exc}")
                failed += 1
                continue
            console.print(f"replayed run {run_id} from step {letter.step}", highlight=False)
    finally:
        store.close()
        celery.close()
    sys.exit(1 if failed else 0)


@dlq.command("purge")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --agent, if given).")
@click.option("--agent", default=None, help="With --all: only this agent type's runs.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(run_ids: tuple[str, ...], all_: bool, agent: str | None, yes: bool) -> None:
    """Delete dead letters for good (their runs stay failed in the session store)."""
    from app import dlq as dead

    client = _dlq_client()
    chosen = _chosen(client, run_ids, all_, agent)
    if not yes:
        click.confirm(f"Delete {len(chosen)} dead letter(s) for good?", abort=True)
    removed = dead.remove(client, chosen)
    console.print(f"purged {removed} dead letter(s)")


@main.group()
def db() -> None:
    """Session store schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to AGENTQ_DATABASE_URL."""
    from app.memory.migrate import migrate

    migrate(Settings().database_url)
    console.print("session store schema is up to date")


@main.group()
def triton() -> None:
    """The local Triton server (CPU, scripted model) used by the demo and tests."""


@triton.command("install")
def triton_install() -> None:
    """Extract tritonserver from the nvidia-pytriton wheel into settings.triton.home."""
    from app.local.triton import install_triton

    home = install_triton(Settings().triton.home)
    console.print(f"tritonserver ready in {home}")


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
def demo(runs: int, agents: str, timeout: float, model_latency_ms: int) -> None:
    """Run the whole stack on this machine and push RUNS agent runs through it."""
    from app.local.demo import run_demo

    names = [a.strip() for a in agents.split(",") if a.strip()]
    ok = run_demo(Settings(), names, runs, timeout, console, model_latency_ms)
    sys.exit(0 if ok else 1)


@main.group()
def bench() -> None:
    """Benchmarks against the alternatives, side by side in one run (bench/ in the repository)."""


def _bench_checkout(module: str) -> None:
    """Make the checkout's bench/ importable, or fail: it is not part of the package."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / module).is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))


def _suite_command(name: str, summary: str) -> None:
    @bench.command(name, help=summary)
    @click.option("--quick", is_flag=True, help="Smaller counts (about a fifth of the time).")
    @click.option("--runs", type=click.IntRange(10), default=None, help="Runs (enqueue, dispatch).")
    @click.option("--concurrency", type=click.IntRange(1), default=None, help="Worker threads.")
    @click.option("--postgres-url", default=None, help="PostgreSQL for dispatch ('' to skip).")
    @click.option("--out-dir", type=click.Path(), default=None, help="JSON and PNG folder.")
    def command(
        quick: bool,
        runs: int | None,
        concurrency: int | None,
        postgres_url: str | None,
        out_dir: str | None,
    ) -> None:
        from dataclasses import replace
        from pathlib import Path

        _bench_checkout("suite.py")
        from bench.suite import main as run_suite
        from bench.suite import plan_for

        plan = plan_for(quick, enqueue_runs=runs, dispatch_runs=runs, concurrency=concurrency)
        if postgres_url is not None:
            plan = replace(plan, postgres_url=postgres_url or None)
        sys.exit(run_suite([name], plan, Path(out_dir) if out_dir else None, console))


for _name, _summary in (
    ("all", "Every scenario below in one run (under 10 minutes), then the table of ratios."),
    ("enqueue", "submit_many vs a stock delay() loop vs raw pipelined LPUSH (runs/s)."),
    ("dispatch", "Trivial runs drained by one worker vs stock no-op tasks (SQLite, PostgreSQL)."),
    ("latency", "Enqueue to first step started, p50/p95/p99, at half the saturation rate."),
    ("memory", "Worker RSS with 64 runs in flight, agentq vs a stock worker."),
):
    _suite_command(_name, _summary)


@bench.command("inference")
@click.option(
    "--concurrency",
    "concurrency",
    default="1,16,64,256",
    show_default=True,
    help="Comma-separated concurrency levels C.",
)
@click.option("--latency-ms", type=int, default=200, show_default=True, help="Per model call.")
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
def bench_inference(concurrency: str, latency_ms: int, out: str | None) -> None:
    """Direct tritonclient vs agent runs through Redis + worker, and streaming relay overhead."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / "inference.py").is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))
    from bench.inference import main as run_bench

    levels = [int(c) for c in concurrency.split(",") if c.strip()]
    sys.exit(run_bench(levels, latency_ms, out, console))


@bench.command("scaling")
@click.option("--time-scale", type=float, default=0.1, show_default=True, help="Real s per sim s.")
@click.option("--step-s", type=float, default=10.0, show_default=True, help="Sim s per step.")
@click.option("--concurrency", type=int, default=4, show_default=True, help="Steps per replica.")
@click.option("--out", type=click.Path(), default=None, help="JSON results file.")
@click.option("--plot", type=click.Path(), default=None, help="PNG (default: beside the JSON).")
def bench_scaling(
    time_scale: float, step_s: float, concurrency: int, out: str | None, plot: str | None
) -> None:
    """KEDA's redis trigger (LLEN) vs the true backlog, replayed on real Redis queues."""
    from app.config import REPO_ROOT

    if not (REPO_ROOT / "bench" / "scaling.py").is_file():
        raise click.ClickException("bench/ is in the source repository; run from a checkout")
    sys.path.insert(0, str(REPO_ROOT))
    from bench.scaling import SimConfig
    from bench.scaling import main as run_scaling

    cfg = SimConfig(time_scale=time_scale, step_s=step_s, concurrency=concurrency)
    sys.exit(run_scaling(cfg, out, plot, console))


if __name__ == "__main__":
    main()
