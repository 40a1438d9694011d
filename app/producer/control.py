"""Signals and cancellation, from any process that can reach the session store and Redis:
``agentq signal`` / ``agentq cancel``, the HTTP API and your own code call these.

``signal(run_id, "approval", {"ok": True})`` resumes a run parked by ``wait_for_signal`` on
that name, once: the same signal sent again is reported as delivered before (``resumed`` is
False) and resumes nothing. ``cancel(run_id)`` ends a parked run now and asks a running one
to stop at its next step (its model call in flight is aborted); its sub-agent runs are
cancelled with it; a run that has ended is left as it is (``cancelled`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from sqlalchemy import select

from app.agents.validation import check_json_value
from app.celery_ext import queued
from app.celery_ext.context import context_of
from app.celery_ext.envelope import compact_json
from app.constants import DEFAULT_TENANT
from app.errors import (
    InvalidInputError,
    NotWaitingError,
    RunEndedError,
    SignalTooLargeError,
    UnknownRunError,
)
from app.memory import endings, waits
from app.memory.records import RunStatus, WaitKind, utc_now
from app.memory.schema import accepted_runs, runs
from app.tasks.effects import carry_out


@dataclass(frozen=True, slots=True)
class SignalResult:
    """What a signal did: ``resumed`` the run, or found it delivered before (False)."""

    run_id: str
    name: str
    resumed: bool


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What a cancellation did: the run's status before it, and whether it was cancelled
    (False: it had ended; a running run is asked to stop at its next step)."""

    run_id: str
    was: RunStatus | None  # None: it had not started (queued)
    cancelled: bool


def _celery(celery: Celery | None) -> Celery:
    if celery is not None:
        return celery
    from app.celery_app import app

    return app


def signal(
    run_id: str,
    name: str,
    data: Any = None,
    *,
    tenant: str | None = None,
    celery: Celery | None = None,
) -> SignalResult:
    """Send the signal ``name`` with ``data`` (any JSON value) to the run ``run_id``.

    Raises :class:`UnknownRunError` (no such run, or another ``tenant``'s),
    :class:`RunEndedError`, :class:`NotWaitingError` (it waits for something else, or for
    nothing), :class:`SignalTooLargeError` (``orchestration.signal_max_bytes``),
    :class:`InvalidInputError` (``data`` is no JSON value, an empty name)."""
    celery = _celery(celery)
    context = context_of(celery)
    if not isinstance(name, str) or not name:
        raise InvalidInputError("a signal needs a name (a non-empty string)")
    check_json_value(data, "data")
    size, limit = len(compact_json(data)), context.settings.orchestration.signal_max_bytes
    if size > limit:
        raise SignalTooLargeError(
            f"signal {name!r} carries {size} bytes of JSON; the limit is {limit} "
            "(AGENTQ_ORCHESTRATION__SIGNAL_MAX_BYTES): pass a reference to the data instead"
        )
    effects = waits.Effects()
    with context.store.write() as conn:
        status = _status(conn, run_id, tenant)
        wait = waits.open_wait(conn, run_id)
        now = utc_now()
        if wait is not None and wait.kind is WaitKind.SIGNAL and wait.name == name:
            result = {"signal": name, "data": data}
            resumed = waits.resume(conn, run_id, wait.step, {wait.call_id: result}, "signal", now)
            if resumed is not None:
                effects.resumed.append(resumed)
        elif waits.delivered(conn, run_id, name):
            return SignalResult(run_id, name, resumed=False)
        elif status.ended:
            raise RunEndedError(
                f"run {run_id} has ended ({status}): signal {name!r} resumes nothing"
            )
        else:
            waiting = _waiting_for(wait)
            raise NotWaitingError(
                f"run {run_id} is {status}{waiting}, not waiting for signal {name!r}"
            )
    carry_out(celery, effects)
    return SignalResult(run_id, name, resumed=bool(effects.resumed))


def _waiting_for(wait: waits.OpenWait | None) -> str:
    if wait is None:
        return ""
    if wait.kind is WaitKind.SIGNAL:
        return f" (waiting for signal {wait.name!r})"
    return " (waiting for its sub-agent runs)" if wait.kind is WaitKind.CHILDREN else " (asleep)"


def _status(conn: Any, run_id: str, tenant: str | None) -> RunStatus:
    row = conn.execute(_select_status(run_id)).first()
    if row is None or (tenant is not None and row.tenant != tenant):
        raise UnknownRunError(f"no run {run_id!r}" + (f" of tenant {tenant!r}" if tenant else ""))
    status: RunStatus = row.status
    return status


def _select_status(run_id: str) -> Any:
    return select(runs.c.status, runs.c.tenant).where(runs.c.id == run_id)


def cancel(run_id: str, *, tenant: str | None = None, celery: Celery | None = None) -> CancelResult:
    """Cancel the run ``run_id`` and its sub-agent runs (see the module docstring).

    Raises :class:`UnknownRunError` for a run the store and the queue do not have (or another
    ``tenant``'s)."""
    celery = _celery(celery)
    context = context_of(celery)
    reason = "run cancelled by request"
    with context.store.write() as conn:
        now = utc_now()
        row = conn.execute(_select_status(run_id)).first()
        if row is not None and tenant is not None and row.tenant != tenant:
            raise UnknownRunError(f"no run {run_id!r} of tenant {tenant!r}")
        if row is None:
            # Not started: stored cancelled, so its first message finds it ended.
            accepted = conn.execute(
                select(accepted_runs.c.kwargs).where(accepted_runs.c.id == run_id)
            ).scalar()
            kwargs = dict(accepted or {})
            if not kwargs:
                found = queued.find(context.broker, run_id)
                if found is not None:
                    kwargs = {"agent": found.agent, "tenant": found.tenant}
            owner = str(kwargs.get("tenant", DEFAULT_TENANT))
            if not kwargs or (tenant is not None and owner != tenant):
                raise UnknownRunError(f"no run {run_id!r}")
            effects = endings.cancel_queued(
                conn, run_id, str(kwargs["agent"]), kwargs.get("input"), owner, now, reason
            )
            was, done = None, bool(effects)
        else:
            was_status, effects = endings.cancel(conn, run_id, now, reason)
            was, done = was_status, not row.status.ended
    carry_out(celery, effects)
    return CancelResult(run_id, was, done)
