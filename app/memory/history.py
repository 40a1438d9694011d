"""A session's conversation across runs: who holds the session, and its history through a
Redis cache in front of SQL.

Runs of one session go one at a time: a run's first step claims the session
(:func:`claim_session`) and holds it until the run ends; the claim is the run's start
(``created_at``), so runs start in the order they hold the session and each starts after the
one before it ended. Its history (the input and answer of the session's last runs that
succeeded) is read by every step. The cache keeps it in Redis with the session's
``history_version``, which the commit of a run that succeeds moves in the same transaction and
which every step reads with its run: a cached history is used only when it is of the version
the step read, so a step never sees one older than SQL's. The run that succeeds adds its turn
to the cached history (when the cache holds the version just before), so the next run reads
it from Redis too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Connection, select

from app.config import SessionSettings
from app.constants import history_keys
from app.memory.records import NewRun, RunState, RunStatus, SessionClaim, utc_now
from app.memory.schema import runs, sessions
from app.memory.sessions import SessionStore
from app.ops import metrics
from app.ops.redis_scripts import Script

log = logging.getLogger(__name__)

Turn = tuple[Any, Any]  # (input, answer) of one earlier run
_APPEND = Script("app.memory.lua", "history_append.lua")


def claim_session(store: SessionStore, run: NewRun) -> SessionClaim:
    """Create ``run`` (and its session) unless they exist, and make it the session's running
    run unless another run of the session is running; in one transaction, undone when the
    claim fails (the run is then not created). A run created here starts now: when it got the
    session. A run holds its session until it ends. A session of another tenant than the run's
    is neither claimed nor told about (``foreign``)."""
    assert run.session_id is not None
    with store.write() as conn:
        store.insert_session(conn, run.session_id, run.agent, utc_now(), run.tenant)
        # Locked first, then its holder read: on PostgreSQL each statement sees what was
        # committed before it, so a claim that waited here sees the run that got there first.
        holder, version, tenant = conn.execute(
            select(sessions.c.active_run, sessions.c.history_version, sessions.c.tenant)
            .where(sessions.c.id == run.session_id)
            .with_for_update()
        ).one()
        if tenant != run.tenant:
            conn.rollback()
            return SessionClaim(None, foreign=True)
        if holder not in (None, run.id) and _running(conn, holder):
            conn.rollback()
            return SessionClaim(holder, version)
        now = utc_now()  # after the holder ended
        created = store.insert_run(conn, replace(run, created_at=now), now, session_written=True)
        if holder != run.id:
            conn.execute(
                sessions.update()
                .where(sessions.c.id == run.session_id)
                .values(active_run=run.id, updated_at=now)
            )
    return SessionClaim(run.id, version, now if created else None)


def _running(conn: Connection, run_id: str) -> bool:
    status = conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
    # A parked run is still its session's: the session's next run waits for it to end.
    return status in (RunStatus.RUNNING, RunStatus.WAITING)


class SessionHistory:
    """The history a step's prompt shows: from Redis when the cache holds the version the
    step read with its run, else from SQL (and then cached)."""

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
        metrics.history_cache(entries is not None)
        if entries is None:
            entries = self._fill(session_id, version)
        before = [e for e in entries if _started_before(e, state)]
        if len(before) < len(entries) and len(entries) == self.turns:
            # Its own turn or a later run's is cached (a step of a run that ended, read again):
            # older runs belong in their place.
            return self.store.history(session_id, before_run=state.id, limit=self.turns)
        return [(e[2], e[3]) for e in before]

    def add(self, state: RunState, version: int, answer: Any) -> None:
        """``state``'s run succeeded, moving its session's history to ``version``: add its
        turn to the cached history if that holds the version before (else leave it: the next
        reader fills it from SQL)."""
        if not self.cached or state.session_id is None:
            return
        turn = _encode([state.created_at.isoformat(), state.id, state.input, answer])
        try:
            _APPEND(
                self.redis,
                history_keys(state.session_id),
                [version - 1, version, turn, self.turns, self.ttl_s],
            )
        except redis.RedisError as exc:
            log.warning("session history cache not updated: %s", exc)

    def _cached(self, session_id: str, version: int) -> list[list[Any]] | None:
        version_key, turns_key = history_keys(session_id)
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(version_key)
                pipe.lrange(turns_key, 0, -1)
                held, turns = pipe.execute()
        except redis.RedisError as exc:
            log.warning("session history cache unreadable, reading SQL: %s", exc)
            return None
        if held is None or int(held) != version:
            return None
        return [json.loads(turn) for turn in turns]

    def _fill(self, session_id: str, version: int) -> list[list[Any]]:
        """The session's last runs that succeeded, from SQL, cached under ``version``."""
        # The version read with the rows, in one statement: a run that succeeded since the
        # step read its own is in the rows, and they are cached as of the version that has it.
        read_version = (
            select(sessions.c.history_version)
            .where(sessions.c.id == session_id)
            .scalar_subquery()
            .label("read_version")
        )
        query = (
            select(runs.c.created_at, runs.c.id, runs.c.input, runs.c.answer, read_version)
            .where(runs.c.session_id == session_id, runs.c.status == RunStatus.SUCCEEDED)
            .order_by(runs.c.created_at.desc(), runs.c.id.desc())
            .limit(self.turns)
        )
        rows = self.store.read(lambda conn: conn.execute(query).all())
        entries = [[row.created_at.isoformat(), row.id, row.input, row.answer] for row in rows]
        entries.reverse()
        if rows:
            version = rows[0].read_version
        version_key, turns_key = history_keys(session_id)
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(turns_key)
                if entries:
                    pipe.rpush(turns_key, *(_encode(e) for e in entries))
                    pipe.expire(turns_key, self.ttl_s)
                pipe.set(version_key, version, ex=self.ttl_s)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("session history not cached: %s", exc)
        return entries

    def forget(self, session_ids: Sequence[str]) -> None:
        """Drop the cached history of ``session_ids`` (deleted or pruned sessions)."""
        keys = [key for session_id in session_ids for key in history_keys(session_id)]
        if keys:
            self.redis.delete(*keys)


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _started_before(entry: list[Any], state: RunState) -> bool:
    """Whether a cached run started before ``state``'s run (the order the history has)."""
    return entry[1] != state.id and datetime.fromisoformat(entry[0]) < state.created_at
