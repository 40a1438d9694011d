"""Options several ``agentq`` commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from app.constants import DEFAULT_TENANT


def tenant_id(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """A click callback: ``value`` if it is a tenant id (or None), else a usage error (exit
    2)."""
    if value is None:
        return None
    from app.agents.validation import check_tenant
    from app.errors import InvalidInputError

    try:
        return check_tenant(value)
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc)) from None


def tenant_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--tenant``: whose runs, sessions and memories the command acts on (the default tenant
    when not given); another tenant's are refused."""
    return click.option(
        "--tenant",
        default=DEFAULT_TENANT,
        show_default=True,
        envvar="AGENTQ_TENANT",
        callback=tenant_id,
        help="The tenant acted for; another tenant's runs and sessions are refused.",
    )(command)
