"""The session store's SQL engines: SQLite tuned for many threads and processes, or
PostgreSQL whose pooled connections are pinged only after sitting idle."""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000


def _enable_wal(cursor: Any) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite reports "locked" at
    # once instead of waiting for busy_timeout, so processes opening it together retry.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


PING_AFTER_IDLE_S: Final = 10.0


def _ping_when_idle(engine: Engine) -> Engine:
    """A pooled connection idle longer than :data:`PING_AFTER_IDLE_S` is pinged before use and
    replaced if the server dropped it (restart, idle timeout); a busy one is not: the
    ``pool_pre_ping`` way, a ping before every checkout, cost two of a step's seven round
    trips. A connection dropped while busy fails its statement: reads are tried once more
    (:meth:`SessionStore._read`), a write fails the step, which Celery retries."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() - record.info.get("checked_in_at", 0.0) < PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(str(exc)) from exc  # the pool connects anew and retries

    return engine


def make_engine(url: str) -> Engine:
    """The engine for ``url``: SQLite tuned for many threads and processes, or PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return _ping_when_idle(create_engine(parsed))
    engine = create_engine(parsed, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We emit BEGIN ourselves (below); sqlite3's implicit one cannot be made IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front (waiting out busy_timeout); a deferred
        # transaction that reads first would fail with SQLITE_BUSY instead of waiting.
        mode = conn.get_execution_options().get("sqlite_begin", "")
        if mode is not None:  # None: one SELECT, a transaction of its own in autocommit mode
            # On the driver's connection: SQLAlchemy's execute path (context, events, result)
            # cost as much again as the INSERTs of a step's commit.
            conn.connection.driver_connection.execute(f"BEGIN {mode}")  # type: ignore[union-attr]

    return engine
