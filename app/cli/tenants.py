"""``agentq tenant export|delete``: one tenant's data as a whole, for operators
(:mod:`app.ops.tenants`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import click

from app.cli import console, echo_json, main
from app.cli.exits import ExitCode, fail
from app.cli.options import tenant_id
from app.cli.runs import _sources


@main.group()
def tenant() -> None:
    """Tenants: every run, session and memory of one customer, kept apart from the others."""


@tenant.command("export")
@click.argument("tenant_id", metavar="TENANT", callback=tenant_id)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write to this file (default: stdout).")  # fmt: skip
def tenant_export(tenant_id: str, output: Path | None) -> None:
    """Everything of TENANT as JSON lines: {"session": ...} per session, {"run": ...} per run
    (as ``agentq runs show --json`` prints it), {"memory": ...} per long-term memory."""
    from rich.progress import Progress

    from app.api.models import run_json
    from app.ops.tenants import export_tenant, memories_of

    def export_to(out: IO[str], store: Any, progress: Any = None) -> int:
        lines = 0
        for item in export_tenant(store, tenant_id, run_json, memories_of(store), progress):
            out.write(json.dumps(item, default=str) + "\n")
            lines += 1
        return lines

    with _sources() as (_settings, store, _client, _broker):
        if output is None:
            export_to(sys.stdout, store)
            return
        with Progress(console=console, transient=True) as bar, output.open("w") as out:
            task = bar.add_task(f"exporting tenant {tenant_id}", total=None)
            lines = export_to(out, store, lambda done: bar.update(task, completed=done))
    console.print(f"{lines} line(s) of tenant {tenant_id} written to {output}", highlight=False)


@tenant.command("delete")
@click.argument("tenant_id", metavar="TENANT", callback=tenant_id)
@click.option("--force", is_flag=True,
              help="Delete it even while one of its runs is running (that run is then "
              "dead-lettered at its next step).")  # fmt: skip
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def tenant_delete(tenant_id: str, force: bool, yes: bool, as_json: bool) -> None:
    """Delete every run, session and memory of TENANT, and its streams, results and cached
    replies, tool results and embeddings in Redis. Refused (exit 2) while one of its runs is
    running, unless --force. Stop its producers first: runs still queued are not touched."""
    from app.celery_ext.app import create_celery
    from app.errors import TenantInUseError
    from app.ops.tenants import delete_tenant, memories_of

    if not yes and not click.confirm(f"Delete everything of tenant {tenant_id!r}?"):
        fail(ExitCode.REFUSED, "not deleted")
    with _sources() as (settings, store, client, _broker):
        backend = create_celery(settings).backend
        try:
            deleted = delete_tenant(
                store, client, tenant_id, force=force, forget_result=backend.forget,
                memories=memories_of(store),
            )  # fmt: skip
        except TenantInUseError as exc:
            fail(ExitCode.REFUSED, str(exc))
    if as_json:
        echo_json({"tenant": tenant_id, "runs": deleted.runs, "steps": deleted.steps,
                   "sessions": deleted.sessions, "memories": deleted.memories,
                   "redis_keys": deleted.redis_keys})  # fmt: skip
        return
    console.print(
        f"tenant {tenant_id} deleted: {deleted.runs} run(s), {deleted.steps} step(s), "
        f"{deleted.sessions} session(s), {deleted.memories} memor(ies), "
        f"{deleted.redis_keys} Redis key(s)",
        highlight=False,
    )
