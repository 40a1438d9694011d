"""Runs of one session against a real worker: submitted at once, they run one at a time (the
others come back after sessions.busy_retry_s), or fail as session_busy when the setting says
so; each sees the answers of the runs before it."""

from __future__ import annotations

import itertools
import time

import pytest

from app.celery_ext.app import create_celery
from app.config import SessionSettings, WorkerSettings
from app.errors import ForeignSessionError, SessionBusyError
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

COUNT = 'count [tool:counter_incr {"key": "turns"}]'


def test_runs_of_a_session_submitted_at_once_run_one_after_another(
    settings, celery_app, start_worker, store
):
    waiting = settings.model_copy(
        update={
            "sessions": SessionSettings(busy_retry_s=0.2),
            "worker": WorkerSettings(concurrency=4),
        }
    )
    results = [submit("coder", COUNT, "chat-1", celery=celery_app) for _ in range(4)]
    start_worker(["coder"], settings=waiting)
    answers = sorted(result.get(timeout=90) for result in results)
    assert answers == [f"Answer: {n}" for n in range(1, 5)]
    runs = sorted(store.list_runs(session_id="chat-1"), key=lambda r: r.created_at)
    assert [r.status for r in runs] == ["succeeded"] * 4
    for earlier, later in itertools.pairwise(runs):
        # A run starts (claims the session) only once the one before it has ended.
        assert earlier.finished_at is not None and earlier.finished_at <= later.created_at
    # The session's history moved once per run that succeeded.
    last = store.load_run(runs[-1].id)
    assert last is not None and last.history_version == 4


def test_with_busy_fail_a_run_whose_session_is_taken_fails_with_its_own_error(
    settings, start_worker, store
):
    failing = settings.model_copy(
        update={
            "sessions": SessionSettings(busy="fail"),
            "worker": WorkerSettings(concurrency=4),
        }
    )
    celery = create_celery(failing)
    try:
        slow = "slow [delay:2000]"
        first = submit("coder", slow, "chat-2", celery=celery)
        start_worker(["coder"], settings=failing, celery=celery)
        deadline = time.monotonic() + 30
        while store.load_run(first.id) is None:  # created by its claim on the session
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.05)
        second = submit("coder", "hello", "chat-2", celery=celery)
        with pytest.raises(SessionBusyError, match=f"its run '{first.id}' is running"):
            second.get(timeout=60)
        assert first.get(timeout=60)
    finally:
        celery.close()
    stored = store.load_run(second.id)
    assert stored is not None and stored.error_type == "session_busy"


def test_a_run_naming_another_tenants_session_is_refused_and_sees_nothing_of_it(
    settings, celery_app, start_worker, store
):
    start_worker(["coder"], settings=settings)
    mine = submit("coder", "remember teal", "chat-3", tenant="acme", celery=celery_app)
    assert mine.get(timeout=60)
    theirs = submit("coder", "what did I say?", "chat-3", tenant="globex", celery=celery_app)
    with pytest.raises(ForeignSessionError, match="is not tenant 'globex'"):
        theirs.get(timeout=60)
    refused = store.load_run(theirs.id)
    assert refused is not None and refused.error_type == "foreign_session"
    assert refused.tenant == "globex" and refused.session_id is None  # kept apart from it
    assert [s.kind for s in refused.steps] == ["error"]  # no model call was made
    # The session is still acme's alone, its history untouched.
    assert [r.id for r in store.list_runs(session_id="chat-3")] == [mine.id]
    again = submit("coder", "and now?", "chat-3", tenant="acme", celery=celery_app)
    assert again.get(timeout=60)
    assert store.load_run(again.id).history_version == 2
