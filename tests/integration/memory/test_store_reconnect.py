"""PostgreSQL connections the server drops are replaced: reads are tried again on a new one,
idle ones are pinged before use, busy ones are not pinged (no round trip per checkout)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from app.memory import engine as engines
from app.memory.sessions import NewRun, SessionStore, StepRecord

pytestmark = pytest.mark.integration


def _terminate_pooled(store: SessionStore, admin_url: str) -> int:
    """Terminate the server side of the connection the store's pool holds; its PID."""
    with store.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()
    return int(pid)


@pytest.fixture
def store(pg_url: str):
    s = SessionStore.from_url(pg_url, migrate=False)
    yield s
    s.close()
    # The schema is the test session's: leave its tables empty for the next test.
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE steps, waits, run_children, runs, sessions"))
    engine.dispose()


def test_a_read_on_a_dropped_connection_is_tried_again(store, postgres_server) -> None:
    store.commit_step("r1", StepRecord(0, "final", "x"), final_answer="a",
                      new_run=NewRun("r1", "agent", "hi"))  # fmt: skip
    _terminate_pooled(store, postgres_server)
    state = store.load_run("r1")
    assert state is not None and state.answer == "a"
    # The pool was renewed by the failure: the next write finds a live connection.
    assert store.commit_step("r2", StepRecord(0, "final", "y"), final_answer="b",
                             new_run=NewRun("r2", "agent", "hi"))  # fmt: skip


def test_only_idle_connections_are_pinged(store, postgres_server, monkeypatch) -> None:
    pings: list[object] = []
    real_ping = store.engine.dialect.do_ping
    monkeypatch.setattr(store.engine.dialect, "do_ping", lambda c: pings.append(c) or real_ping(c))
    store.load_run("none")
    pings.clear()
    for _ in range(5):
        store.load_run("none")
    assert pings == []  # busy: reused without a ping
    monkeypatch.setattr(engines, "PING_AFTER_IDLE_S", 0.0)
    _terminate_pooled(store, postgres_server)
    assert store.load_run("none") is None  # idle: pinged, found dead, replaced, no error
    assert pings
