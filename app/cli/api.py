"""``agentq api``: serve the HTTP run API (:mod:`app.api`) with uvicorn."""

from __future__ import annotations

import click

from app.cli import main
from app.cli.exits import ExitCode, fail
from app.config import Settings
from app.ops import logs


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
