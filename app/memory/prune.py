"""A prune pass: what each agent type's retention lets go, deleted from the session store in
short transactions of at most ``batch`` runs (or sessions) each.

In this order, for every agent type found in the store (its :class:`Policy`):

1. sessions idle past ``session_idle_days`` (no run started or finished since, none running):
   their runs with those runs' rows, then the session itself;
2. finished runs that finished more than ``max_age_days`` ago, or that are not among the
   agent type's newest ``max_runs`` finished runs, with their rows; except the last
   ``history_turns`` succeeded runs of each session: a kept session keeps its history.

A running run is never deleted. A run's rows are its steps, step drafts, kept tool results
and accepted-run record, deleted explicitly (so they are counted; steps would cascade). On
PostgreSQL a batch locks its runs (``FOR UPDATE SKIP LOCKED``): a dead letter replayed at that
moment waits, and two passes at once take different runs. A dry run counts with the same
conditions and deletes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.exc import DBAPIError

from app.config import AgentRetention, RetentionSettings
from app.memory.records import RunStatus
from app.memory.retention import HISTORY_TURNS, Policy, PruneReport, policies
from app.memory.schema import (
    accepted_runs,
    run_children,
    runs,
    sessions,
    step_drafts,
    steps,
    tool_results,
    waits,
)
from app.memory.sessions import SessionStore, store_error

Key = tuple[datetime, str]
"""A run's place in the order batches take runs in: (created_at, id)."""
Batch = Callable[[Connection, Key | None], tuple[dict[str, int], Key | None]]
"""One transaction's deletes, given the last run the previous one took: (rows deleted per
table, the last run this one took)."""
_RUN_ROWS = (steps, step_drafts, tool_results, waits)  # keyed by run_id
# Runs that have not ended: never pruned (a parked run may wait for days).
UNFINISHED = (RunStatus.RUNNING, RunStatus.WAITING)


def delete_runs(conn: Connection, ids: list[str]) -> dict[str, int]:
    """Delete the runs ``ids`` with their steps, drafts, kept tool results and accepted
    records; rows deleted per table."""
    if not ids:
        return {"runs": 0}
    counts = {
        table.name: conn.execute(delete(table).where(table.c.run_id.in_(ids))).rowcount
        for table in _RUN_ROWS
    }
    counts["run_children"] = conn.execute(
        delete(run_children).where(
            or_(run_children.c.parent_id.in_(ids), run_children.c.child_id.in_(ids))
        )
    ).rowcount
    counts["accepted_runs"] = conn.execute(
        delete(accepted_runs).where(accepted_runs.c.id.in_(ids))
    ).rowcount
    counts["runs"] = conn.execute(delete(runs).where(runs.c.id.in_(ids))).rowcount
    return counts


def idle_sessions(agent: str, before: datetime) -> Select[Any]:
    """Ids of ``agent``'s sessions whose last run started and finished before ``before`` and
    that have no running run."""
    r = runs.alias("busy")  # not the outer query's runs, which this may sit inside
    busy = select(r.c.id).where(
        r.c.session_id == sessions.c.id,
        or_(r.c.status.in_(UNFINISHED), r.c.created_at >= before, r.c.finished_at >= before),
    )
    return select(sessions.c.id).where(
        sessions.c.agent == agent, sessions.c.updated_at < before, ~exists(busy)
    )


def in_history(history_turns: int) -> ColumnElement[bool]:
    """A run is one of its session's last ``history_turns`` succeeded runs (what
    :meth:`SessionStore.history` reads)."""
    h = runs.alias("history")
    last = (
        select(h.c.id)
        .where(h.c.session_id == runs.c.session_id, h.c.status == RunStatus.SUCCEEDED)
        .order_by(h.c.created_at.desc(), h.c.id.desc())
        .limit(history_turns)
    )
    return and_(
        runs.c.status == RunStatus.SUCCEEDED,
        runs.c.session_id.is_not(None),
        runs.c.id.in_(last),
    )


class Pruner:
    """Prune passes over one store, with the policies of ``retention`` and ``overrides``
    (agent type -> its ``AgentSpec.retention``)."""

    def __init__(
        self,
        store: SessionStore,
        retention: RetentionSettings,
        overrides: Mapping[str, AgentRetention] | None = None,
        *,
        history_turns: int = HISTORY_TURNS,
    ) -> None:
        self.store = store
        self.retention = retention
        self.overrides = dict(overrides or {})
        self.history_turns = history_turns

    def policies(self) -> dict[str, Policy]:
        """The policy of every agent type that has runs or sessions in the store."""
        found = union_all(select(runs.c.agent).distinct(), select(sessions.c.agent).distinct())
        agents = self.store.read(lambda conn: conn.execute(found).scalars().all())
        return policies(self.retention, self.overrides, agents)

    def run(
        self,
        now: datetime,
        *,
        dry_run: bool = False,
        max_batches: int | None = None,
        progress: Callable[[PruneReport], None] | None = None,
        stop: threading.Event | None = None,
        forget: Callable[[Sequence[str]], None] | None = None,
    ) -> PruneReport:
        """One pass at time ``now``: what went (or, ``dry_run``, would go). It ends early,
        the next pass going on, after ``max_batches`` transactions or once ``stop`` is set
        (between two); ``progress`` is called after each transaction, ``forget`` with the
        ids of the sessions removed (their cached history goes too)."""
        started = time.monotonic()
        report = PruneReport(now=now, dry_run=dry_run)
        found = self.policies()
        if dry_run:
            self._count(found, now, report)
        else:
            left = max_batches
            for agent, policy in found.items():
                removed: list[str] = []
                batch = self._idle_batches(agent, policy, now, removed)
                left = self._drain(report, agent, batch, left, progress, stop)
                if removed and forget is not None:
                    forget(removed)
            for agent, policy in found.items():
                batch = self._expired_batches(agent, policy, now)
                left = self._drain(report, agent, batch, left, progress, stop)
        report.seconds = time.monotonic() - started
        return report

    def _drain(
        self,
        report: PruneReport,
        agent: str,
        batch: Batch,
        left: int | None,
        progress: Callable[[PruneReport], None] | None,
        stop: threading.Event | None,
    ) -> int | None:
        """Transactions of ``batch`` until one deletes less than a full batch, none of
        ``left`` (None: no limit) is left or ``stop`` is set; what is left."""
        after: Key | None = None
        while (left is None or left > 0) and not (stop is not None and stop.is_set()):
            with self.store.write() as conn:
                counts, after = batch(conn, after)
            report.transactions += 1
            left = None if left is None else left - 1
            report.add(agent, counts)
            if progress is not None:
                progress(report)
            if max(counts["runs"], counts.get("sessions", 0)) < self.retention.batch:
                break
        return left

    def _idle_batches(self, agent: str, policy: Policy, now: datetime, removed: list[str]) -> Batch:
        """Each batch: up to ``batch`` runs of ``agent``'s idle sessions, then up to ``batch``
        idle sessions left without runs (their ids added to ``removed``)."""
        idle = idle_sessions(agent, policy.sessions_before(now))
        empty = (
            idle.where(~exists(select(runs.c.id).where(runs.c.session_id == sessions.c.id)))
            .limit(self.retention.batch)
            .with_for_update(skip_locked=True)
        )

        def batch(conn: Connection, _after: Key | None) -> tuple[dict[str, int], Key | None]:
            taken, _ = self._lock(conn, runs.c.session_id.in_(idle), ordered=False)
            counts = delete_runs(conn, taken)
            gone = conn.execute(empty).scalars().all()
            deleted = delete(sessions).where(sessions.c.id.in_(gone))
            counts["sessions"] = conn.execute(deleted).rowcount if gone else 0
            removed.extend(gone)
            return counts, None

        return batch

    def _expired_batches(self, agent: str, policy: Policy, now: datetime) -> Batch:
        """Each batch: up to ``batch`` of ``agent``'s finished runs past its age or count
        limit, oldest first, after the previous batch's last (the runs it passed over, a
        session's history, are not read again)."""
        boundary = self.store.read(lambda conn: self._count_boundary(conn, agent, policy))
        expired = self._expired(agent, policy, now, boundary)

        def batch(conn: Connection, after: Key | None) -> tuple[dict[str, int], Key | None]:
            where = expired
            if after is not None:
                where = and_(expired, tuple_(runs.c.created_at, runs.c.id) > after)
            taken, last = self._lock(conn, where)
            return delete_runs(conn, taken), last

        return batch

    def _expired(
        self,
        agent: str,
        policy: Policy,
        now: datetime,
        boundary: Key | None,
    ) -> ColumnElement[bool]:
        """``agent``'s finished runs past the age limit or beyond ``boundary`` (the newest
        run the count limit lets go), its sessions' history runs excepted."""
        cut = policy.runs_before(now)
        past = and_(runs.c.created_at < cut, runs.c.finished_at < cut)
        upper = cut
        if boundary is not None:
            past = or_(past, tuple_(runs.c.created_at, runs.c.id) <= boundary)
            upper = max(cut, boundary[0])
        kept = in_history(self.history_turns) if self.history_turns > 0 else None
        return and_(
            runs.c.agent == agent,
            runs.c.created_at <= upper,  # a range on ix_runs_created_id, in the batches' order
            # Finished, written so that no index serves it: SQLite took ix_runs_status for
            # status IN (...) and sorted every finished run for each batch.
            runs.c.status.not_in(UNFINISHED),
            past,
            *(() if kept is None else (not_(kept),)),
        )

    def _count_boundary(
        self,
        conn: Connection,
        agent: str,
        policy: Policy,
        among: ColumnElement[bool] | None = None,
    ) -> Key | None:
        """(created_at, id) of ``agent``'s newest finished run beyond its newest ``max_runs``
        (of the runs ``among`` selects); None when there is no count limit or no such run."""
        if policy.max_runs is None:
            return None
        query = (
            select(runs.c.created_at, runs.c.id)
            .where(runs.c.agent == agent, runs.c.status.not_in(UNFINISHED))
            .order_by(runs.c.created_at.desc(), runs.c.id.desc())
            .offset(policy.max_runs)
            .limit(1)
        )
        if among is not None:
            query = query.where(among)
        row = conn.execute(query).first()
        return None if row is None else (row.created_at, row.id)

    def _lock(
        self, conn: Connection, where: ColumnElement[bool], *, ordered: bool = True
    ) -> tuple[list[str], Key | None]:
        """``batch`` runs ``where`` selects (``ordered``: the oldest), locked against a
        replay (PostgreSQL; SQLite's write transaction holds the whole store): their ids, and
        the (created_at, id) of the last."""
        batch = (
            select(runs.c.id, runs.c.created_at)
            .where(where)
            .limit(self.retention.batch)
            .with_for_update(skip_locked=True)
        )
        if ordered:  # unordered, a session's runs come off ix_runs_session_created
            batch = batch.order_by(runs.c.created_at, runs.c.id)
        rows = conn.execute(batch).all()
        return [row.id for row in rows], (rows[-1].created_at, rows[-1].id) if rows else None

    def _count(self, found: dict[str, Policy], now: datetime, report: PruneReport) -> None:
        """A dry run: the rows the pass would delete, counted with the same conditions (runs
        of idle sessions once, under their session's agent type)."""
        idle_all = [idle_sessions(a, p.sessions_before(now)) for a, p in found.items()]
        # The runs left once the idle sessions are gone, as the pass's second phase sees them.
        left = (
            or_(runs.c.session_id.is_(None), runs.c.session_id.not_in(union_all(*idle_all)))
            if idle_all
            else None
        )

        def count(conn: Connection) -> None:
            for agent, policy in found.items():
                idle = idle_sessions(agent, policy.sessions_before(now))
                report.add(agent, self._counts(conn, runs.c.session_id.in_(idle)))
                report.add(agent, {"sessions": _rows(conn, idle)})
            for agent, policy in found.items():
                boundary = self._count_boundary(conn, agent, policy, left)
                expired = self._expired(agent, policy, now, boundary)
                if left is not None:
                    expired = and_(expired, left)
                report.add(agent, self._counts(conn, expired))

        engine = self.store.engine
        if engine.dialect.name == "postgresql":  # every count sees the same snapshot
            engine = engine.execution_options(isolation_level="REPEATABLE READ")
        try:
            with engine.connect() as conn, conn.begin():
                count(conn)
        except DBAPIError as exc:
            raise store_error(exc, engine) from exc

    @staticmethod
    def _counts(conn: Connection, where: ColumnElement[bool]) -> dict[str, int]:
        """Rows per table that deleting the runs ``where`` selects would delete."""
        ids = select(runs.c.id).where(where)
        counts = {"runs": _rows(conn, ids)}
        for table in _RUN_ROWS:
            counts[table.name] = _rows(conn, select(table.c.run_id).where(table.c.run_id.in_(ids)))
        counts["accepted_runs"] = _rows(
            conn, select(accepted_runs.c.id).where(accepted_runs.c.id.in_(ids))
        )
        return counts


def _rows(conn: Connection, query: Select[Any]) -> int:
    """How many rows ``query`` selects."""
    return int(conn.execute(select(func.count()).select_from(query.subquery())).scalar_one())
