"""``agentq queues`` (each agent type's queue) and ``agentq purge`` (empty them, as
``celery purge`` does: ready messages only, after a confirmation)."""

from __future__ import annotations

import click
from rich.table import Table

from app.agents.registry import AgentRegistry
from app.cli import console, echo_json, main, print_table
from app.cli.exits import ExitCode, fail
from app.config import Settings

_QUEUES_HELP = (
    "Agent types, or their queue names (repeatable or comma-separated; default: every agent type)."
)


def chosen_agents(registry: AgentRegistry, values: tuple[str, ...]) -> list[str]:
    """The agent types ``-Q`` names (every one without it); exits 2 on a name that is neither
    an agent type nor a queue."""
    from app.ops.queues import select_agents

    if not values:
        return registry.names
    names, unknown = select_agents(registry, values)
    if unknown:
        fail(
            ExitCode.REFUSED,
            f"no agent type or queue {', '.join(map(repr, unknown))} (agent types: "
            f"{', '.join(registry.names)}; queues: "
            f"{', '.join(dict.fromkeys(s.queue_name for s in registry))})",
        )
    return names


def _age(seconds: float | None, ready: int) -> str:
    if not ready:
        return "-"
    if seconds is None:
        return "unknown"  # no agentq_enqueued_at header (a message agentq did not publish)
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


@main.command()
@click.option("-Q", "--queues", "selected", multiple=True, help=_QUEUES_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
def queues(selected: tuple[str, ...], as_json: bool) -> None:
    """Each agent type's queue: ready (every priority), unacked (in flight: being run;
    delayed: retries waiting for their countdown), how long the oldest ready message has
    waited, and the agent type's dead letters."""
    from app.agents.loader import load_registry
    from app.ops.queues import read_queue_stats

    settings = Settings()
    registry = load_registry(settings)
    stats = read_queue_stats(settings, registry, chosen_agents(registry, selected))
    if as_json:
        echo_json([s.to_json() for s in stats])
        return
    table = Table("agent", "queue", "ready", "unacked", "in flight", "delayed", "oldest", "dead")
    for column in table.columns:
        column.no_wrap = True  # names and counts whole: wider than the terminal if need be
    for column in table.columns[2:]:
        column.justify = "right"
    for s in stats:
        table.add_row(
            s.agent,
            s.queue,
            str(s.ready),
            str(s.unacked),
            str(s.in_flight),
            str(s.delayed),
            _age(s.oldest_waiting_s, s.ready),
            str(s.dead_letters),
        )
    print_table(table)


@main.command()
@click.option("-Q", "--queues", "selected", multiple=True, help=_QUEUES_HELP)
@click.option("-f", "--force", "--yes", "yes", is_flag=True, help="Do not ask for confirmation.")
def purge(selected: tuple[str, ...], yes: bool) -> None:
    """Delete the messages waiting in agent queues (every agent type's without -Q): their runs
    never start, or stop at that step. Steps taken by a worker (unacked) are left alone."""
    from app.agents.loader import load_registry
    from app.ops.queues import purge_ready, read_queue_stats
    from app.ops.redis_clients import redis_client

    settings = Settings()
    registry = load_registry(settings)
    names = chosen_agents(registry, selected)
    stats = {s.queue: s for s in read_queue_stats(settings, registry, names)}  # by queue
    total = sum(s.ready for s in stats.values())
    if not total:
        console.print(f"no messages waiting in {', '.join(stats)}", highlight=False)
        return
    if not yes:
        listed = "".join(
            f"  {queue}: {s.ready} (and {s.unacked} taken by workers, kept)\n"
            for queue, s in stats.items()
        )
        click.confirm(f"Delete {total} waiting message(s)?\n{listed}", abort=True)
    broker = redis_client(settings, settings.broker)
    try:
        purged = purge_ready(broker, {queue: s.agent for queue, s in stats.items()})
    finally:
        broker.close()
    for queue, count in purged.items():
        console.print(f"purged {count} message(s) from {queue}", highlight=False)
