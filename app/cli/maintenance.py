"""``agentq maintenance ...``: upkeep jobs a CronJob runs, so they happen with every worker
scaled to zero (``recover``: runs whose next message Redis lost, published again)."""

from __future__ import annotations

import click

from app.cli import echo_json, main
from app.config import Settings


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
    is in no queue (Redis lost it) get it published again; exits 0 also when another
    recoverer holds the lock (it does the pass)."""
    from app.celery_ext.app import create_celery
    from app.celery_ext.context import context_of
    from app.tasks.recovery import Recoverer

    settings = Settings()
    if grace_s is not None:
        settings.durability.recovery_grace_s = grace_s
    celery = create_celery(settings)
    context = context_of(celery)
    report = Recoverer.for_app(celery, context.store).run_once()
    if as_json:
        echo_json({"locked": report is None, **({} if report is None else report.to_json())})
    elif report is None:
        click.echo("another recoverer holds the lock: nothing done")
    else:
        click.echo(
            f"{report.stalled} run(s) stalled, {report.waiting} accepted run(s) not started, "
            f"{len(report.lost)} without a message, {len(report.published)} published again "
            f"({report.seconds * 1000:.0f} ms)"
        )
