"""Sessions as operators see them: one session's summary, its export (every run with its
steps), and its deletion from everywhere it is kept (SQL, the history cache, the runs' token
streams, published markers and results). Shared by ``agentq session``; no CLI here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select

from app.constants import DEFAULT_TENANT, history_keys, published_key, stream_key
from app.errors import SessionInUseError
from app.memory.prune import UNFINISHED
from app.memory.records import RunRecord, RunState, RunStatus
from app.memory.schema import accepted_runs, runs, sessions, step_drafts, steps, tool_results
from app.memory.sessions import SessionStore
from app.ops.runs import check_tenant_of

_PAGE = 200  # runs read per round trip when a session's runs are walked


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session: its row, its runs counted by status, and the run holding it (if running)."""

    id: str
    agent: str
    created_at: datetime
    updated_at: datetime
    history_version: int
    runs: dict[str, int] = field(default_factory=dict)  # status -> count
    active_run: str | None = None  # its running run, if one is
    tenant: str = DEFAULT_TENANT

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "agent": self.agent,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "history_version": self.history_version,
            "runs": self.runs,
            "active_run": self.active_run,
        }


@dataclass(frozen=True, slots=True)
class DeletedSession:
    """What deleting a session removed."""

    session_id: str
    runs: int
    steps: int
    redis_keys: int


def session_info(
    store: SessionStore, session_id: str, tenant: str | None = None
) -> SessionInfo | None:
    """The session ``session_id``, or None when the store has no such session. With
    ``tenant``, a session of another tenant raises :class:`TenantAccessError`."""
    row = store.read(
        lambda conn: conn.execute(select(sessions).where(sessions.c.id == session_id)).first()
    )
    if row is None:
        return None
    check_tenant_of("session", session_id, row.tenant, tenant)
    counts = select(runs.c.status, func.count()).where(runs.c.session_id == session_id)
    counted = store.read(lambda conn: conn.execute(counts.group_by(runs.c.status)).all())
    by_status = {str(status): int(n) for status, n in counted}
    unfinished = by_status.get(RunStatus.RUNNING) or by_status.get(RunStatus.WAITING)
    active = row.active_run if unfinished else None
    if active is not None and not _is_running(store, active):
        active = None  # a run started since, or one running without holding it (pre-0009)
    return SessionInfo(
        row.id,
        row.agent,
        row.created_at,
        row.updated_at,
        row.history_version,
        by_status,
        active,
        row.tenant,
    )


def _is_running(store: SessionStore, run_id: str) -> bool:
    query = select(runs.c.status).where(runs.c.id == run_id)
    return store.read(lambda conn: conn.execute(query).scalar()) in UNFINISHED


def session_runs(store: SessionStore, session_id: str) -> Iterator[RunRecord]:
    """Every run of the session, newest first, read a page at a time."""
    before: tuple[datetime, str] | None = None
    while True:
        page = store.list_runs(session_id=session_id, limit=_PAGE, before=before)
        yield from page
        if len(page) < _PAGE:
            return
        before = (page[-1].created_at, page[-1].id)


def export_session(
    store: SessionStore, session_id: str, view: Callable[[RunState], dict[str, Any]],
    progress: Callable[[int, int], None] | None = None, tenant: str | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """The session and each of its runs (oldest first) with its steps, as ``view`` shows a
    run; None when there is no such session. ``progress(done, total)`` after each run.
    ``tenant``: as for :func:`session_info`."""
    info = session_info(store, session_id, tenant)
    if info is None:
        return None
    records = list(session_runs(store, session_id))
    records.reverse()
    exported = []
    for done, record in enumerate(records, 1):
        state = store.load_run(record.id)
        if state is not None:  # deleted since it was listed
            exported.append(view(state))
        if progress is not None:
            progress(done, len(records))
    return {"session": info.to_json(), "runs": exported}


def delete_session(
    store: SessionStore,
    redis: Any,
    session_id: str,
    *,
    force: bool = False,
    forget_result: Callable[[str], None] | None = None,
    tenant: str | None = None,
) -> DeletedSession | None:
    """Delete the session and its runs from SQL (steps, drafts, kept tool results, accepted
    records), then its cached history and each run's token stream, published-step markers
    and (``forget_result``) result; None when there is no such session.

    Raises :class:`SessionInUseError` while one of its runs is running or parked
    (``waiting``), unless ``force`` (that run's next step then finds no run and is
    dead-lettered; a parked one's signal finds no run); with ``tenant``,
    :class:`TenantAccessError` for a session of another tenant.
    """
    of_session = select(runs.c.id).where(runs.c.session_id == session_id)
    with store.write() as conn:
        found = conn.execute(
            select(sessions.c.id, sessions.c.tenant)
            .where(sessions.c.id == session_id)
            .with_for_update()
        ).first()
        if found is None:
            return None
        check_tenant_of("session", session_id, found.tenant, tenant)
        listed = conn.execute(
            select(runs.c.id, runs.c.next_step, runs.c.status).where(
                runs.c.session_id == session_id
            )
        ).all()
        running = [row.id for row in listed if row.status in UNFINISHED]
        if running and not force:
            raise SessionInUseError(
                f"session {session_id!r} has {len(running)} running run(s) ({running[0]} ...): "
                "wait for them to end, or delete with --force (their next step then finds no "
                "run and is dead-lettered)"
            )
        step_count = conn.execute(delete(steps).where(steps.c.run_id.in_(of_session))).rowcount
        conn.execute(delete(tool_results).where(tool_results.c.run_id.in_(of_session)))
        conn.execute(delete(step_drafts).where(step_drafts.c.run_id.in_(of_session)))
        conn.execute(delete(accepted_runs).where(accepted_runs.c.id.in_(of_session)))
        run_count = conn.execute(delete(runs).where(runs.c.session_id == session_id)).rowcount
        conn.execute(delete(sessions).where(sessions.c.id == session_id))
    keys = list(history_keys(session_id))
    for row in listed:
        keys.append(stream_key(found.tenant, row.id))
        keys.extend(published_key(row.id, step) for step in range(row.next_step + 1))
    removed = delete_keys(redis, keys)
    if forget_result is not None:
        for row in listed:
            forget_result(row.id)
    return DeletedSession(session_id, run_count, step_count, removed)


def delete_keys(redis: Any, keys: list[Any], page: int = 500) -> int:
    """Delete ``keys`` from Redis, ``page`` per command; how many were there."""
    removed = 0
    for start in range(0, len(keys), page):
        removed += int(redis.delete(*keys[start : start + page]))
    return removed
