"""The exit codes of ``agentq`` commands and the one line a failing command prints.

A command that cannot do its work prints one line on stderr (what happened, what to do) and
exits with one of these codes; docs/operations.md lists them for scripts and supervisors.
"""

from __future__ import annotations

import enum
import importlib
import sys
from collections.abc import Mapping
from typing import Any, NoReturn

import click

from app.errors import (
    AgentqError,
    NotWaitingError,
    RunEndedError,
    SignalTooLargeError,
    StoreError,
    SubmitError,
    TenantAccessError,
    UnknownRunError,
)


class ExitCode(enum.IntEnum):
    """What an ``agentq`` command's exit status means."""

    OK = 0
    ERROR = 1  # bad settings, a failed start-up; a worker stopped by an error (Celery's code)
    REFUSED = 2  # bad input or usage: nothing was done (click's usage errors exit 2 too)
    REDIS_UNAVAILABLE = 3  # Redis (broker or results) unreachable or refused the connection
    STORE_UNAVAILABLE = 4  # the session store unreachable or without its schema
    RUN_FAILED = 5  # the run ended without an answer
    TIMED_OUT = 6  # no answer within --timeout (the run may still finish)
    UNKNOWN_RUN = 7  # signal, cancel: no such run (nor queued), or another tenant's
    RUN_ENDED = 8  # a signal to a run that has ended
    NOT_WAITING = 9  # a signal to a run that does not wait for it


def fail(code: int, message: str) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    click.echo(f"agentq: {one_line(message)}", err=True)
    sys.exit(code)


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of blanks made single spaces."""
    return " ".join(text.split())


def exit_for(exc: Exception) -> tuple[ExitCode, str] | None:
    """The exit code and line for a command that raised ``exc``; None for an error no
    command expects (a bug: its traceback is shown)."""
    import redis  # imported here: `agentq --help` stays quick
    from kombu.exceptions import OperationalError
    from pydantic import ValidationError

    match exc:
        case SubmitError() | TenantAccessError() | SignalTooLargeError():
            return ExitCode.REFUSED, f"refused: {exc}"
        case UnknownRunError():
            return ExitCode.UNKNOWN_RUN, str(exc)
        case RunEndedError():
            return ExitCode.RUN_ENDED, str(exc)
        case NotWaitingError():
            return ExitCode.NOT_WAITING, str(exc)
        case StoreError():
            return ExitCode.STORE_UNAVAILABLE, str(exc)
        case OperationalError() | redis.ConnectionError() | redis.TimeoutError():
            return ExitCode.REDIS_UNAVAILABLE, (
                f"Redis unreachable: {exc}; check AGENTQ_REDIS_URL and that Redis is up"
            )
        case ValidationError():
            fields = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            return ExitCode.ERROR, f"invalid settings: {fields}"
        case AgentqError():  # configuration, local services, ...: their text says what to do
            return ExitCode.ERROR, str(exc)
    return None


class OneLineGroup(click.Group):
    """A command group whose commands fail with one line and an :class:`ExitCode`.

    ``lazy_commands`` (command name -> module) are imported when first looked up: the module
    registers its commands on the group, so ``agentq worker`` does not import what ``agentq
    runs`` or ``agentq bench`` need (tables, the bench)."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.lazy_commands.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(module)  # its decorators add its commands to this group
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException:
            raise  # click prints these itself (usage errors exit 2)
        except Exception as exc:
            found = exit_for(exc)
            if found is None:
                raise
            fail(*found)
