"""``agentq session show|export|delete``: one session's conversation across runs, for operators
(:mod:`app.ops.sessions`)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from app.cli import console, echo_json, main, print_table
from app.cli.exits import ExitCode, fail
from app.cli.options import tenant_option
from app.cli.runs import _short, _sources


@main.group()
def session() -> None:
    """Sessions: a conversation across runs (each run sees the earlier ones' input and answer)."""


def _missing(session_id: str) -> None:
    fail(ExitCode.REFUSED, f"no session {session_id!r} in the session store")


@session.command("show")
@click.argument("session_id")
@click.option("--runs", "shown", type=click.IntRange(1, 500), default=20, show_default=True,
              help="How many of its latest runs to list.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@tenant_option
def session_show(session_id: str, shown: int, as_json: bool, tenant: str) -> None:
    """A session: when it started and last moved, its runs by status, the run holding it, and
    its latest runs with their input and answer."""
    from app.ops.sessions import session_info

    with _sources() as (_settings, store, _client, _broker):
        info = session_info(store, session_id, tenant)
        latest = store.list_runs(session_id=session_id, limit=shown) if info else []
    if info is None:
        _missing(session_id)
        return
    if as_json:
        body = info.to_json()
        body["latest_runs"] = [
            {"id": r.id, "status": str(r.status), "created_at": r.created_at.isoformat(),
             "input": r.input, "answer": r.answer, "error_type": r.error_type}
            for r in latest
        ]  # fmt: skip
        echo_json(body)
        return
    fields = Table.grid(padding=(0, 2))
    fields.add_column(no_wrap=True, style="bold")
    fields.add_column(overflow="fold")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(info.runs.items())) or "none"
    for name, value in (
        ("session", info.id),
        ("agent", info.agent),
        ("created", info.created_at.isoformat()),
        ("updated", info.updated_at.isoformat()),
        ("runs", counts),
        ("running", info.active_run or "none"),
    ):
        fields.add_row(name, Text(value))
    console.print(fields, highlight=False)
    table = Table("run", "status", "created (UTC)", "input", "answer or error")
    for column in table.columns[:3]:
        column.no_wrap = True
    for run in latest:
        table.add_row(
            run.id,
            str(run.status),
            run.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            Text(_short(run.input, 80)),
            Text(_short(run.answer, 80) if run.error is None else run.error_type or "failed"),
        )
    print_table(table)


@session.command("export")
@click.argument("session_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: stdout).")  # fmt: skip
@tenant_option
def session_export(session_id: str, output: Path | None, tenant: str) -> None:
    """The session and every run of it, oldest first, each as ``agentq runs show --json``
    prints it (steps, tool calls with arguments and results, tokens), as one JSON document."""
    from rich.progress import Progress

    from app.api.models import run_json
    from app.ops.sessions import export_session

    with _sources() as (_settings, store, _client, _broker):
        if output is None:
            exported = export_session(store, session_id, run_json, tenant=tenant)
        else:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("exporting runs", total=None)
                exported = export_session(
                    store, session_id, run_json,
                    lambda done, total: progress.update(task, completed=done, total=total),
                    tenant=tenant,
                )  # fmt: skip
    if exported is None:
        _missing(session_id)
        return
    text = json.dumps(exported, indent=2, default=str)
    if output is None:
        click.echo(text)
        return
    output.write_text(text + "\n")
    console.print(f"{len(exported['runs'])} run(s) of session {session_id} written to {output}",
                  highlight=False)  # fmt: skip


@session.command("delete")
@click.argument("session_id")
@click.option("--force", is_flag=True,
              help="Delete it even while one of its runs is running (that run is then "
              "dead-lettered at its next step).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
@tenant_option
def session_delete(session_id: str, force: bool, as_json: bool, tenant: str) -> None:
    """Delete the session everywhere: its runs and their steps in SQL, its cached history, and
    its runs' token streams, markers and results in Redis. Refused (exit 2) while one of its
    runs is running, unless --force."""
    from app.celery_ext.app import create_celery
    from app.errors import SessionInUseError
    from app.ops.sessions import delete_session

    with _sources() as (settings, store, client, _broker):
        backend = create_celery(settings).backend
        try:
            deleted = delete_session(
                store, client, session_id, force=force, forget_result=backend.forget,
                tenant=tenant,
            )  # fmt: skip
        except SessionInUseError as exc:
            fail(ExitCode.REFUSED, str(exc))
    if deleted is None:
        _missing(session_id)
        return
    if as_json:
        echo_json({"session": session_id, "runs": deleted.runs, "steps": deleted.steps,
                   "redis_keys": deleted.redis_keys})  # fmt: skip
        return
    console.print(
        f"session {session_id} deleted: {deleted.runs} run(s), {deleted.steps} step(s), "
        f"{deleted.redis_keys} Redis key(s)",
        highlight=False,
    )
