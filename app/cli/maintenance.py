"""``agentq maintenance ...``: upkeep jobs a CronJob runs, so they happen with every worker
scaled to zero (``recover``: runs whose next message Redis lost, published again; ``prune``:
what retention lets go, deleted from the session store)."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from app.cli import echo_json, get_console, main, print_table
from app.cli.exits import one_line
from app.config import Settings
from app.errors import AgentqError
from app.memory.retention import TABLES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from app.memory.prune import Pruner
    from app.memory.retention import PruneReport


@main.group()
def maintenance() -> None:
    """Upkeep that workers also do while they run, as one-off jobs (for a CronJob)."""


@maintenance.command("recover")
@click.option(
    "--grace-s",
    type=click.FloatRange(min=0, min_open=True),  # as the setting: more than 0
    default=None,
    help="Seconds a run must not have moved to be looked at (default: "
    "AGENTQ_DURABILITY__RECOVERY_GRACE_S).",
)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a line.")
def recover(grace_s: float | None, as_json: bool) -> None:
    """One recovery pass: runs that have not moved for the grace period and whose message
    is in no queue (Redis lost it) get it published again, and parked runs whose timer or
    timeout is due are resumed or ended; exits 0 also when another recoverer holds the lock
    (it does the pass)."""
    from app.celery_ext.app import create_celery
    from app.celery_ext.context import context_of
    from app.tasks.recovery import Recoverer
    from app.tasks.timers import fire_due

    settings = Settings()
    if grace_s is not None:
        settings.durability.recovery_grace_s = grace_s
    celery = create_celery(settings)
    context = context_of(celery)
    report = Recoverer.for_app(celery, context.store).run_once()
    # Parked runs whose timer or timeout is due: resumed (or ended) here too, so their step
    # lands in its queue and wakes a worker of an agent type scaled to zero.
    fired = fire_due(celery, context.store, settings.orchestration.timer_batch)
    if as_json:
        body = {} if report is None else report.to_json()
        echo_json({"locked": report is None, **body, "due_waits_ended": fired})
    elif report is None:
        click.echo(f"another recoverer holds the lock: nothing done; {fired} due wait(s) ended")
    else:
        click.echo(
            f"{report.stalled} run(s) stalled, {report.waiting} accepted run(s) not started, "
            f"{len(report.lost)} without a message, {len(report.published)} published again, "
            f"{fired} due wait(s) ended ({report.seconds * 1000:.0f} ms)"
        )


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    """``--now``: an ISO-8601 time; without a zone, UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO-8601 time (2026-01-31T12:00:00Z)"
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _seconds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """``--every``: seconds more than 0; alone, 0 (the setting's interval)."""
    if not value:
        return None if value is None else 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise click.BadParameter(f"{value!r} is not a number of seconds more than 0")
    return seconds


@maintenance.command("prune")
@click.option(
    "--now",
    callback=_instant,
    default=None,
    metavar="ISO-8601",
    help="The time the limits count back from (default: the clock); one pass only.",
)
@click.option("--dry-run", is_flag=True, help="Count what would go; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
@click.option(
    "--every",
    callback=_seconds,
    is_flag=False,
    flag_value="",  # --every alone
    default=None,
    metavar="[SECONDS]",
    help="A pass every SECONDS (alone: AGENTQ_RETENTION__INTERVAL_S) until SIGTERM: the "
    "compose service; one line per pass.",
)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Stop a pass after this many transactions (the next pass goes on).",
)
@click.option(
    "--alive-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file touched after each pass that succeeds (for a container health check).",
)
def prune(
    now: datetime | None,
    dry_run: bool,
    as_json: bool,
    every: float | None,
    max_batches: int | None,
    alive_file: Path | None,
) -> None:
    """Delete what retention lets go (docs/retention.md): finished runs past their agent
    type's age or count limit and sessions idle past theirs, in short transactions; never a
    running run, nor the history a kept session needs. Each pass adds its counts to the
    exporter's agentq_pruned_rows_total."""
    from app.agents.loader import load_registry
    from app.memory.prune import Pruner
    from app.memory.sessions import SessionStore

    settings = Settings()
    if every is not None and now is not None:
        raise click.UsageError("--now gives one pass its time: not with --every")
    overrides = {spec.name: spec.retention for spec in load_registry(settings)}
    store = SessionStore.from_url(settings.database_url, migrate=False)
    try:
        history = settings.sessions.history_turns  # what a kept session's runs read
        pruner = Pruner(store, settings.retention, overrides, history_turns=history)
        if every is None:
            report = _pass(pruner, settings, now, dry_run, max_batches, alive_file, as_json)
            _show(report, as_json)
        else:
            interval = every or settings.retention.interval_s
            _loop(pruner, settings, interval, dry_run, max_batches, alive_file, as_json)
    finally:
        store.close()


def _pass(
    pruner: Pruner,
    settings: Settings,
    now: datetime | None,
    dry_run: bool,
    max_batches: int | None,
    alive_file: Path | None,
    quiet: bool,
    stop: threading.Event | None = None,
) -> PruneReport:
    """One pass; the cached history of the sessions it removed dropped and its counts added
    to the exporter's (not a dry run's); progress on a terminal unless ``quiet``."""
    if dry_run:
        report = _run(pruner, now, dry_run, max_batches, quiet, stop, None)
    else:
        from app.memory.history import SessionHistory
        from app.ops.pruned import record_pass
        from app.ops.redis_clients import redis_client

        client = redis_client(settings)
        try:
            history = SessionHistory(pruner.store, client, settings.sessions)
            report = _run(pruner, now, dry_run, max_batches, quiet, stop, history.forget)
            record_pass(client, report, time.time())
        finally:
            client.close()
    if alive_file is not None:
        alive_file.touch()
    return report


def _run(
    pruner: Pruner,
    now: datetime | None,
    dry_run: bool,
    max_batches: int | None,
    quiet: bool,
    stop: threading.Event | None,
    forget: Callable[[Sequence[str]], None] | None,
) -> PruneReport:
    """The pass itself, a progress line on a terminal unless ``quiet``."""
    run = functools.partial(
        pruner.run,
        now or datetime.now(UTC),
        dry_run=dry_run,
        max_batches=max_batches,
        stop=stop,
        forget=forget,
    )
    console = get_console()
    if quiet or not console.is_terminal:
        return run()
    with console.status("pruning…") as status:

        def progress(report: PruneReport) -> None:
            status.update(
                f"pruning… {report.total('runs')} run(s), {report.total('sessions')} "
                f"session(s) deleted in {report.transactions} transaction(s)"
            )

        return run(progress=progress)


def _show(report: PruneReport, as_json: bool) -> None:
    """The pass's rows per agent type and table: JSON or a table."""
    from rich.table import Table

    if as_json:
        echo_json(report.to_json())
        return
    verb = "would go" if report.dry_run else "deleted"
    by_agent = report.by_agent()
    if by_agent:
        table = Table(title=f"rows {verb} (now {report.now.isoformat()})", title_justify="left")
        table.add_column("agent", no_wrap=True)
        for name in TABLES:
            table.add_column(name, justify="right")
        for agent, counts in by_agent.items():
            table.add_row(agent, *(str(counts[t]) for t in TABLES))
        table.add_row("total", *(str(report.total(t)) for t in TABLES), style="bold")
        print_table(table)
    else:
        click.echo(f"nothing to prune (now {report.now.isoformat()})")
    ms = f"{report.seconds * 1000:.0f} ms"
    if report.dry_run:
        click.echo(f"counted in {ms} (dry run: nothing deleted)")
    else:
        click.echo(f"{report.transactions} transaction(s), {ms}")


def _loop(
    pruner: Pruner,
    settings: Settings,
    interval: float,
    dry_run: bool,
    max_batches: int | None,
    alive_file: Path | None,
    as_json: bool,
) -> None:
    """A pass every ``interval`` seconds until SIGTERM or Ctrl-C; a pass that fails (store or
    Redis away) is reported and the next one tried."""
    import redis

    stopped = threading.Event()
    # As a container's PID 1 the process has no default SIGTERM action: handle it explicitly.
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.is_set():
            try:
                report = _pass(
                    pruner, settings, None, dry_run, max_batches, alive_file, True, stopped
                )
            except (AgentqError, redis.RedisError) as exc:
                click.echo(f"agentq: prune pass failed: {one_line(str(exc))}", err=True)
            else:
                if as_json:
                    click.echo(json.dumps(report.to_json()))
                else:
                    totals = ", ".join(f"{report.total(t)} {t}" for t in TABLES)
                    verb = "would go" if dry_run else "deleted"
                    click.echo(f"prune pass at {report.now.isoformat()}: {totals} {verb}")
            stopped.wait(interval)
    except KeyboardInterrupt:
        pass
