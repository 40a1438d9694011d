"""What recovery reads from the session store, and the record of accepted runs it keeps.

Two kinds of run can wait on a Redis message that is gone (a ``FLUSHALL``, a failover to a
replica that lagged, a Redis restarted without its last second of writes):

- a run in ``runs`` still ``running`` whose last committed step is older than the grace
  period: its next step's message may be lost (:func:`stalled_runs`);
- a run a producer recorded as accepted (:func:`record_accepted`, ``durability.accepted =
  "sql"``) that has no row in ``runs`` yet: its first message may be lost
  (:func:`accepted_waiting`).

Whether the message is really gone is for Redis to say (:mod:`app.tasks.recovery`); this
module only finds the candidates, oldest first, a bounded batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, insert, select

from app.memory.records import RunStatus, utc_now
from app.memory.schema import accepted_runs, runs, steps
from app.memory.sessions import SessionStore


@dataclass(frozen=True, slots=True)
class Waiting:
    """A run that may be waiting on a lost message: the step it waits to run, and the keyword
    arguments of that step's message."""

    run_id: str
    agent: str
    step: int
    kwargs: dict[str, Any]


def record_accepted(
    store: SessionStore, accepted: Iterable[tuple[str, str, Mapping[str, Any]]]
) -> None:
    """Record runs as accepted, in one transaction: (run id, agent, first message's keyword
    arguments) each. A run recorded already keeps its first record."""
    now = utc_now()
    rows = [
        {"id": run_id, "agent": agent, "kwargs": dict(kwargs), "created_at": now}
        for run_id, agent, kwargs in accepted
    ]
    if not rows:
        return
    with store.write() as conn:
        conn.execute(_insert_new(conn.dialect.name), rows)


def _insert_new(dialect: str) -> Any:
    """An INSERT into ``accepted_runs`` that skips a run recorded already."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(accepted_runs).on_conflict_do_nothing()
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(accepted_runs).on_conflict_do_nothing()
    return insert(accepted_runs).prefix_with("IGNORE")  # MySQL, MariaDB


def forget_accepted(store: SessionStore, run_ids: Iterable[str]) -> None:
    """Drop the records of ``run_ids`` (their submit failed after all: never enqueued)."""
    ids = list(run_ids)
    if ids:
        with store.write() as conn:
            conn.execute(delete(accepted_runs).where(accepted_runs.c.id.in_(ids)))


def accepted_waiting(store: SessionStore, before: datetime, limit: int) -> list[Waiting]:
    """Runs recorded as accepted before ``before`` that are not in ``runs`` yet, oldest first,
    at most ``limit``. The records of runs that are in ``runs`` by now are dropped first."""
    started = exists(select(1).where(runs.c.id == accepted_runs.c.id))
    with store.write() as conn:
        conn.execute(delete(accepted_runs).where(accepted_runs.c.created_at < before, started))
    query = (
        select(accepted_runs.c.id, accepted_runs.c.agent, accepted_runs.c.kwargs)
        .where(accepted_runs.c.created_at < before)
        .order_by(accepted_runs.c.created_at)
        .limit(limit)
    )
    rows = store.read(lambda conn: conn.execute(query).all())
    return [Waiting(row.id, row.agent, 0, dict(row.kwargs)) for row in rows]


def stalled_runs(store: SessionStore, before: datetime, limit: int) -> list[Waiting]:
    """Runs still running whose last committed step was committed before ``before``, the
    longest still first, at most ``limit``; each with its next step's message arguments."""
    last = steps.alias("last")
    query = (
        select(runs.c.id, runs.c.agent, runs.c.session_id, runs.c.next_step)
        .join(last, and_(last.c.run_id == runs.c.id, last.c.step == runs.c.next_step - 1))
        .where(runs.c.status == RunStatus.RUNNING, last.c.created_at < before)
        .order_by(last.c.created_at)
        .limit(limit)
    )
    rows = store.read(lambda conn: conn.execute(query).all())
    return [
        Waiting(
            row.id,
            row.agent,
            row.next_step,
            {
                "agent": row.agent,
                "session_id": row.session_id,
                "run_id": row.id,
                "step": row.next_step,
            },
        )
        for row in rows
    ]


def still_waiting(store: SessionStore, waiting: list[Waiting]) -> list[Waiting]:
    """Those of ``waiting`` that have not moved since they were read: a run's first step is
    not stored, a later step's run is still running at that step."""
    if not waiting:
        return []
    ids = [w.run_id for w in waiting]
    query = select(runs.c.id, runs.c.status, runs.c.next_step).where(runs.c.id.in_(ids))
    rows = {row.id: row for row in store.read(lambda conn: conn.execute(query).all())}
    kept = []
    for w in waiting:
        row = rows.get(w.run_id)
        if row is None:
            moved = w.step != 0  # a later step's run is gone (deleted): nothing to publish
        else:
            moved = row.status != RunStatus.RUNNING or row.next_step != w.step
        if not moved:
            kept.append(w)
    return kept
