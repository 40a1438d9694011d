"""``agentq api``: serve the HTTP run API (:mod:`app.api`) with uvicorn; ``agentq api key``:
make, list and revoke its keys (no api extra needed)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from app.cli import main
from app.cli.exits import ExitCode, fail
from app.cli.options import tenant_id
from app.config import Settings
from app.ops import logs

if TYPE_CHECKING:
    from app.memory.api_keys import ApiKeyStore


@main.group(invoke_without_command=True)
@click.option("--host", default=None, help="Address to listen on (default: api.host).")
@click.option("--port", type=int, default=None, help="Port to listen on (default: api.port).")
@click.option("--workers", type=int, default=None, help="Processes (default: api.workers).")
@click.pass_context
def api(ctx: click.Context, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the HTTP run API: POST /v1/runs, GET /v1/runs/ID, GET /v1/runs/ID/events
    (docs/api.md); stops on SIGTERM or Ctrl-C, letting open requests finish."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        import uvicorn

        import app.api.app  # noqa: F401  (fails here, in one line, without the extra)
    except ImportError as exc:
        fail(
            ExitCode.ERROR,
            f"the API needs the api extra ({exc.name} is missing): pip install 'agentq[api]'",
        )
    settings = Settings()
    logs.configure(settings.log_format)
    # JSON logs: uvicorn's lines go through the root logger logs.configure set up.
    keep_logging = {"log_config": None} if settings.log_format == "json" else {}
    uvicorn.run(
        "app.api.app:app_from_environment",
        factory=True,
        host=host or settings.api.host,
        port=settings.api.port if port is None else port,
        workers=workers or settings.api.workers,
        timeout_graceful_shutdown=settings.api.shutdown_timeout_s,
        **keep_logging,  # type: ignore[arg-type]
    )


@api.group()
def key() -> None:
    """API keys (kept in the session store): make one, list them, revoke one."""


def _key_store() -> ApiKeyStore:
    from app.memory.api_keys import ApiKeyStore

    settings = Settings()
    return ApiKeyStore.from_url(settings.database_url, migrate=settings.auto_migrate, cache_s=0)


@key.command("new")
@click.option(
    "--scopes", required=True, help="What the key may do, comma-separated: submit, read, operate."
)
@click.option("--tenant", default=None, callback=tenant_id, help="The tenant the key acts for.")
@click.option("--name", default=None, help="A name to tell the key by (its owner, its use).")
def key_new(scopes: str, tenant: str | None, name: str | None) -> None:
    """Make a key and print it, alone on stdout, this once: it cannot be shown again."""
    from app.errors import UnknownScopeError
    from app.memory.api_keys import parse_scopes

    try:
        wanted = parse_scopes(scopes)
    except UnknownScopeError as exc:
        raise click.BadParameter(str(exc), param_hint="--scopes") from None
    store = _key_store()
    try:
        made, secret = store.create(wanted, tenant, name)
    finally:
        store.close()
    click.echo(secret)
    click.echo(
        f"API key {made.id} ({', '.join(made.scopes)}) made. It is shown this once and cannot "
        f"be shown again: keep it now. Revoke it with: agentq api key revoke {made.id}",
        err=True,
    )


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def key_list(as_json: bool) -> None:
    """Every key (revoked ones too): id, name, scopes, tenant, when made and revoked."""
    from rich.table import Table

    from app.cli import console

    store = _key_store()
    try:
        keys = store.list()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps([k.to_json() for k in keys], indent=2))
        return
    table = Table("id", "name", "scopes", "tenant", "created", "revoked")
    for k in keys:
        table.add_row(
            k.id,
            k.name or "",
            ",".join(k.scopes),
            k.tenant or "",
            f"{k.created_at:%Y-%m-%d %H:%M:%S}",
            f"{k.revoked_at:%Y-%m-%d %H:%M:%S}" if k.revoked_at else "",
        )
    console.print(table, highlight=False)


@key.command("revoke")
@click.argument("key_id")
def key_revoke(key_id: str) -> None:
    """Revoke key KEY_ID: every API process refuses it within api.key_cache_s."""
    store = _key_store()
    try:
        revoked = store.revoke(key_id)
    finally:
        store.close()
    if revoked is None:
        raise click.ClickException(f"no API key {key_id!r} (agentq api key list shows them)")
    click.echo(f"API key {key_id} revoked at {revoked.revoked_at:%Y-%m-%d %H:%M:%S} UTC")
