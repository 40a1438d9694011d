"""``agentq signal`` and ``agentq cancel``: :func:`app.producer.control.signal` and
:func:`~app.producer.control.cancel` from the command line, one line of outcome each (``--json``:
the HTTP API's body). A run that is unknown, has ended or does not wait for the signal exits
7, 8 or 9 (:class:`~app.cli.exits.ExitCode`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from app.cli import echo_json, main
from app.cli.options import tenant_option


def _data(data: str | None, data_file: Path | None) -> Any:
    """The signal's payload: ``--data`` or ``--data-file`` parsed as JSON (none: null)."""
    if data is not None and data_file is not None:
        raise click.UsageError("give --data or --data-file, not both")
    if data_file is not None:
        text, hint = data_file.read_text(encoding="utf-8"), "--data-file"
    elif data is not None:
        text, hint = data, "--data"
    else:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"not JSON ({exc}); quote a string as JSON: '\"yes\"'", param_hint=hint
        ) from None


@main.command()
@click.argument("run_id", metavar="RUN")
@click.argument("name")
@click.option("--data", default=None, help="The signal's payload: any JSON value.")
@click.option(
    "--data-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The payload from a file of JSON.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (the API's body).")
@tenant_option
def signal(
    run_id: str, name: str, data: str | None, data_file: Path | None, as_json: bool, tenant: str
) -> None:
    """Send the signal NAME to RUN, parked by wait_for_signal on that name: it resumes once,
    with the payload as the call's result. Sent again: delivered before, nothing resumes.
    Exit 7: no such run; 8: it has ended; 9: it does not wait for NAME; 2: payload too large
    or not JSON."""
    from app.celery_app import get_celery
    from app.producer.control import signal as send

    payload = _data(data, data_file)
    sent = send(run_id, name, payload, tenant=tenant, celery=get_celery())
    if as_json:
        echo_json({"run_id": sent.run_id, "name": sent.name, "resumed": sent.resumed})
    elif sent.resumed:
        click.echo(f"run {run_id}: signal {name!r} delivered, the run resumed")
    else:
        click.echo(f"run {run_id}: signal {name!r} delivered before; nothing resumed")


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout (the API's body).")
@tenant_option
def cancel(run_id: str, as_json: bool, tenant: str) -> None:
    """Cancel RUN and its sub-agent runs: a waiting or queued run ends now, a running one at
    its next step (its model call in flight is aborted). A run that has ended is left as it
    is (exit 0). Exit 7: no such run."""
    from app.celery_app import get_celery
    from app.memory.records import RunStatus
    from app.producer.control import cancel as stop

    done = stop(run_id, tenant=tenant, celery=get_celery())
    if as_json:
        was = "queued" if done.was is None else done.was.value
        echo_json({"run_id": done.run_id, "was": was, "cancelled": done.cancelled})
    elif done.was is not None and done.was.ended:
        click.echo(f"run {run_id}: already ended ({done.was}): nothing to do")
    elif done.was is RunStatus.RUNNING:
        click.echo(f"run {run_id}: asked to stop at its next step")
    elif done.cancelled:
        click.echo(f"run {run_id}: cancelled")
    else:  # queued when read, started before the cancellation could store it
        click.echo(f"run {run_id}: started meanwhile, not cancelled: run agentq cancel again")
