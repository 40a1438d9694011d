"""A session's conversation across runs: who holds the session, and its history through a
Redis cache in front of SQL.

Runs of one session go one at a time: a run's first step claims the session
(:func:`claim_session`) and holds it until the run ends. Its history (the input and answer of
the session's last runs that succeeded) is read by every step; the cache keeps it in Redis
tagged with the session's ``history_version``, which the commit of a run that succeeds moves in
the same transaction and which every step reads with its run. An entry is used only when its
tag is the version the step read, so a step never sees a history older than SQL's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Connection, select

from app.config import SessionSettings
from app.constants import history_key
from app.memory.records import NewRun, RunState, RunStatus, SessionClaim, utc_now
from app.memory.schema import runs, sessions
from app.memory.sessions import SessionStore
from app.ops import metrics

log = logging.getLogger(__name__)

Turn = tuple[Any, Any]  # (input, answer) of one earlier run


def claim_session(store: SessionStore, run: NewRun) -> SessionClaim:
    """Create ``run`` (and its session) unless they exist, and make it the session's running
    run unless another run of the session is running; in one transaction, undone when the
    claim fails (the run is then not created). A run holds its session until it ends."""
    assert run.session_id is not None
    now = utc_now()
    with store.write() as conn:
        store.insert_session(conn, run.session_id, run.agent, now)
        # Locked first, then its holder read: on PostgreSQL each statement sees what was
        # committed before it, so a claim that waited here sees the run that got there first.
        holder, version = conn.execute(
            select(sessions.c.active_run, sessions.c.history_version)
            .where(sessions.c.id == run.session_id)
            .with_for_update()
        ).one()
        if holder not in (None, run.id) and _running(conn, holder):
            conn.rollback()
            return SessionClaim(holder, version)
        store.insert_run(conn, run, now)
        if holder != run.id:
            conn.execute(
                sessions.update()
                .where(sessions.c.id == run.session_id)
                .values(active_run=run.id, updated_at=now)
            )
    return SessionClaim(run.id, version)


def _running(conn: Connection, run_id: str) -> bool:
    status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
    return status == RunStatus.RUNNING


class SessionHistory:
    """The history a step's prompt shows: from Redis when the cached entry carries the
    version the step read with its run, else from SQL (and then cached)."""

    def __init__(self, store: SessionStore, redis_client: Any, settings: SessionSettings) -> None:
        self.store = store
        self.redis = redis_client
        self.turns = settings.history_turns
        self.cached = settings.history_cache
        self.ttl_s = settings.history_cache_ttl_s

    def of(self, state: RunState) -> list[Turn]:
        """The (input, answer) of the runs of ``state``'s session that succeeded before it
        started, the last ``history_turns`` of them, oldest first."""
        session_id = state.session_id
        if session_id is None:
            return []
        version = state.history_version
        if not self.cached or version is None:
            return self.store.history(session_id, before_run=state.id, limit=self.turns)
        entries = self._cached(session_id, version)
        if entries is None:
            metrics.history_cache(False)
            entries = self._fill(session_id, version)
        else:
            metrics.history_cache(True)
        before = [e for e in entries if _started_before(e, state)]
        if len(before) < len(entries) and len(entries) == self.turns:
            # A run that started later ended first (rare): older runs may belong in its place.
            return self.store.history(session_id, before_run=state.id, limit=self.turns)
        return [(e[2], e[3]) for e in before]

    def _cached(self, session_id: str, version: int) -> list[list[Any]] | None:
        try:
            raw = self.redis.get(history_key(session_id))
        except redis.RedisError as exc:
            log.warning("session history cache unreadable, reading SQL: %s", exc)
            return None
        if raw is None:
            return None
        entry = json.loads(raw)
        return entry["turns"] if entry.get("v") == version else None

    def _fill(self, session_id: str, version: int) -> list[list[Any]]:
        """The session's last runs that succeeded, from SQL, cached under ``version``."""
        query = (
            select(runs.c.created_at, runs.c.id, runs.c.input, runs.c.answer)
            .where(runs.c.session_id == session_id, runs.c.status == RunStatus.SUCCEEDED)
            .order_by(runs.c.created_at.desc(), runs.c.id.desc())
            .limit(self.turns)
        )
        rows = self.store.read(lambda conn: conn.execute(query).all())
        entries = [[row.created_at.isoformat(), row.id, row.input, row.answer] for row in rows]
        entries.reverse()
        try:
            self.redis.set(
                history_key(session_id),
                json.dumps({"v": version, "turns": entries}, separators=(",", ":")),
                ex=self.ttl_s,
            )
        except redis.RedisError as exc:
            log.warning("session history not cached: %s", exc)
        return entries

    def forget(self, session_ids: Sequence[str]) -> None:
        """Drop the cached history of ``session_ids`` (deleted or pruned sessions)."""
        if session_ids:
            self.redis.delete(*(history_key(s) for s in session_ids))


def _started_before(entry: list[Any], state: RunState) -> bool:
    """Whether a cached run started before ``state``'s run (the order the history has)."""
    return entry[1] != state.id and datetime.fromisoformat(entry[0]) < state.created_at
