"""``agentq dlq ...``: dead-lettered runs and quarantined messages: list, show, replay, purge.

``replay`` exits 1 when a named run is not in the dead-letter queue and 2 (refused) when a
named entry has no run to replay (a quarantined message, a step of a run never started).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from app.cli import console, echo_json, main, print_table
from app.config import Settings


@main.group()
def dlq() -> None:
    """Dead-lettered runs (retries exhausted, poison) and quarantined messages, with why."""


def _dlq_client() -> Any:
    from app.ops.redis_clients import redis_client

    return redis_client(Settings())


@dlq.command("list")
@click.option("--agent", default=None, help="Only this agent type's runs.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout instead of a table.")
def dlq_list(agent: str | None, limit: int, as_json: bool) -> None:
    """The newest dead letters (quarantined messages show as kind `quarantined`)."""
    import datetime
    from dataclasses import asdict

    from app.tasks import dead_letters as dead

    client = _dlq_client()
    letters = dead.list_letters(client, limit, agent)
    if as_json:
        # What the table shows; `dlq show --json` has the arguments, traceback and raw bytes.
        left_out = ("kwargs", "traceback", "raw")
        echo_json([{k: v for k, v in asdict(x).items() if k not in left_out} for x in letters])
        return
    table = Table("run", "agent", "step", "kind", "retries", "failed at", "reason")
    for column in table.columns[:5]:
        column.no_wrap = True  # ids whole, at any width
    for letter in letters:
        when = datetime.datetime.fromtimestamp(letter.failed_at, datetime.UTC)
        reason = letter.reason
        if letter.quarantined:
            reason = f"{reason} ({letter.raw_length} bytes from {letter.queue})"
        table.add_row(
            letter.run_id,
            letter.agent or "-",
            str(letter.step),
            letter.kind,
            str(letter.retries),
            when.strftime("%Y-%m-%d %H:%M:%S"),
            reason,
            style="yellow" if letter.quarantined else None,
        )
    print_table(table)
    console.print(f"{dead.count(client)} dead letter(s) in all")


@dlq.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, raw bytes included.")
def dlq_show(run_id: str, as_json: bool) -> None:
    """One dead letter: reason, traceback and the step's arguments (JSON, secrets masked);
    a quarantined message's bytes as kept, escaped (\\xHH) after its fields."""
    from dataclasses import asdict

    from app.ops.masking import masked
    from app.tasks import dead_letters as dead

    letter = dead.get(_dlq_client(), run_id)
    if letter is None:
        raise click.ClickException(f"run {run_id} is not in the dead-letter queue")
    shown = {**asdict(letter), "kwargs": masked(letter.kwargs)}  # replay uses the stored ones
    if as_json:
        echo_json(shown)
        return
    raw = shown.pop("raw")
    click.echo(json.dumps(shown, indent=2))
    if letter.quarantined:
        # Escaped when stored: printable ASCII only, so nothing in it drives the terminal.
        click.echo(f"raw (of {letter.raw_length} bytes, the first kept, \\xHH escaped):")
        click.echo(raw)


def _chosen(client: Any, run_ids: tuple[str, ...], all_: bool, agent: str | None) -> list[str]:
    from app.tasks import dead_letters as dead

    if bool(run_ids) == all_:
        raise click.UsageError("name RUN_IDs or pass --all (not both)")
    if run_ids:
        return list(run_ids)
    return [letter.run_id for letter in dead.list_letters(client, dead.count(client), agent)]


def _runs(client: Any, run_ids: tuple[str, ...], all_: bool, agent: str | None) -> list[str]:
    """What ``replay`` is asked for: ``--all`` leaves out entries with no run to replay."""
    from app.tasks import dead_letters as dead

    if run_ids or not all_:
        return _chosen(client, run_ids, all_, agent)
    letters = dead.list_letters(client, dead.count(client), agent)
    return [letter.run_id for letter in letters if letter.replayable]


@dlq.command("replay")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --agent, if given).")
@click.option("--agent", default=None, help="With --all: only this agent type's runs.")
def dlq_replay(run_ids: tuple[str, ...], all_: bool, agent: str | None) -> None:
    """Send dead-lettered runs back to their queues; they resume at the step that failed.

    Exits 1 if a named run is not dead-lettered, 2 if a named entry has no run to replay.
    """
    from rich.markup import escape

    from app.celery_ext.app import create_celery
    from app.celery_ext.context import context_of
    from app.cli.exits import ExitCode
    from app.errors import NotDeadLetteredError, QuarantinedMessageError
    from app.memory.sessions import SessionStore
    from app.tasks.dead_letters import replay

    settings = Settings()
    client = _dlq_client()
    celery = create_celery(settings)
    store = SessionStore.from_url(settings.database_url, migrate=False)
    failed = quarantined = 0
    try:
        for run_id in _runs(client, run_ids, all_, agent):
            try:
                letter = replay(celery, context_of(celery).registry, store, client, run_id)
            except NotDeadLetteredError as exc:
                console.print(f"[red]skipped:[/red] {exc}", highlight=False)
                failed += 1
                continue
            except QuarantinedMessageError as exc:
                console.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False)
                quarantined += 1
                continue
            console.print(f"replayed run {run_id} from step {letter.step}", highlight=False)
    finally:
        store.close()
        celery.close()
    sys.exit(1 if failed else ExitCode.REFUSED if quarantined else 0)


@dlq.command("purge")
@click.argument("run_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter (of --agent, if given).")
@click.option("--agent", default=None, help="With --all: only this agent type's runs.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(run_ids: tuple[str, ...], all_: bool, agent: str | None, yes: bool) -> None:
    """Delete dead letters for good (their runs stay failed in the session store)."""
    from app.tasks import dead_letters as dead

    client = _dlq_client()
    chosen = _chosen(client, run_ids, all_, agent)
    if not yes:
        click.confirm(f"Delete {len(chosen)} dead letter(s) for good?", abort=True)
    removed = dead.remove(client, chosen)
    console.print(f"purged {removed} dead letter(s)")
