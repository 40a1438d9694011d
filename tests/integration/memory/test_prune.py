"""Prune passes on a real SQLite file and a real PostgreSQL schema, the clock passed in: what
each limit removes, what is never removed, bounded transactions, and dry runs."""

from __future__ import annotations

import threading

import pytest

from app.config import AgentRetention, RetentionSettings
from app.memory.prune import Pruner
from app.memory.records import RunStatus
from app.memory.retention import PruneReport
from app.memory.sessions import SessionStore
from tests.fixtures.retention import NOW, STEPS_PER_RUN, Rows

pytestmark = pytest.mark.integration

RUNNING, FAILED, WAITING = RunStatus.RUNNING, RunStatus.FAILED, RunStatus.WAITING


@pytest.fixture
def rows(sql_store: SessionStore) -> Rows:
    return Rows(sql_store)


def pruner(store: SessionStore, **settings: object) -> Pruner:
    overrides = settings.pop("overrides", {})
    return Pruner(store, RetentionSettings(**settings), overrides)  # type: ignore[arg-type]


def test_finished_runs_past_the_age_limit_go_with_all_their_rows(rows: Rows) -> None:
    kept = {rows.run("r10", 10), rows.run("r29", 29, status=FAILED)}
    gone = {rows.run("r31", 31, draft=True), rows.run("r40", 40, status=FAILED)}
    report = pruner(rows.store, max_age_days=30).run(NOW)
    assert rows.run_ids() == kept
    assert rows.rows_of(gone) == {"steps": 0, "step_drafts": 0, "tool_results": 0}
    assert rows.rows_of(kept)["steps"] == 2 * STEPS_PER_RUN
    assert rows.count("accepted_runs") == 2
    assert report.by_agent() == {
        "research": {
            "runs": 2,
            "steps": 2 * STEPS_PER_RUN,
            "step_drafts": 1,
            "tool_results": 1,
            "accepted_runs": 2,
            "sessions": 0,
        }
    }
    # Nothing left to go: a second pass deletes nothing.
    assert pruner(rows.store, max_age_days=30).run(NOW).rows == {}


def test_a_running_run_is_never_pruned_whatever_its_age_or_count(rows: Rows) -> None:
    rows.run("old-running", 400, status=RUNNING)
    rows.run("done", 1)
    pruner(rows.store, max_age_days=1 / 24, max_runs=1).run(NOW)
    assert rows.run_ids() == {"old-running"}


def test_a_parked_run_is_never_pruned_nor_its_idle_session(rows: Rows) -> None:
    # Parked on a signal for a year: not over, so neither it nor its session goes.
    parked = rows.session("parked")
    rows.run("old-waiting", 400, status=WAITING, session=parked)
    rows.run("done", 1)
    pruner(rows.store, max_age_days=1 / 24, max_runs=1, session_idle_days=90).run(NOW)
    assert rows.run_ids() == {"old-waiting"}
    assert rows.session_ids() == {parked}


def test_the_count_limit_keeps_each_agent_types_newest_finished_runs(rows: Rows) -> None:
    for age in range(1, 6):
        rows.run(f"research-{age}", age)
        rows.run(f"coder-{age}", age, agent="coder")
    rows.run("research-running", 9, status=RUNNING)
    report = pruner(rows.store, max_runs=3).run(NOW)
    assert rows.run_ids() == {
        *(f"research-{age}" for age in (1, 2, 3)),
        *(f"coder-{age}" for age in (1, 2, 3)),
        "research-running",
    }
    assert report.total("runs") == 4
    assert report.rows[("coder", "runs")] == 2


def test_an_agent_types_own_retention_overrides_the_settings(rows: Rows) -> None:
    for agent in ("research", "coder", "gone-agent"):
        rows.run(f"{agent}-7", 7, agent=agent)
        rows.run(f"{agent}-40", 40, agent=agent)
    overrides = {
        "coder": AgentRetention(max_age_days=5),
        "research": AgentRetention(max_runs=1),  # its age limit: the settings'
    }
    pruner(rows.store, max_age_days=30, overrides=overrides).run(NOW)
    # gone-agent is declared nowhere any more: the settings' retention.
    assert rows.run_ids() == {"research-7", "gone-agent-7"}


def test_a_kept_sessions_history_stays_and_its_older_runs_go(rows: Rows) -> None:
    session = rows.session("chat")
    for i in range(25):  # succeeded, 64 .. 40 days old: all past the age limit
        rows.run(f"turn-{i:02}", 64 - i, session=session)
    rows.run("failed-old", 50, session=session, status=FAILED)
    rows.run("latest", 1, session=session, status=FAILED)  # the session is not idle
    before = rows.store.history(session)
    assert len(before) == 20
    report = pruner(rows.store, max_age_days=30, session_idle_days=90).run(NOW)
    # The last 20 succeeded runs, however old, stay: the history a new run reads is whole.
    assert rows.store.history(session) == before
    assert rows.run_ids() == {f"turn-{i:02}" for i in range(5, 25)} | {"latest"}
    assert rows.session_ids() == {session}
    assert report.total("runs") == 6


def test_history_turns_is_how_much_history_a_session_keeps(rows: Rows) -> None:
    session = rows.session("chat")
    for i in range(6):
        rows.run(f"turn-{i}", 60 - i, session=session)
    rows.run("latest", 1, session=session)
    Pruner(rows.store, RetentionSettings(max_age_days=30), history_turns=3).run(NOW)
    assert rows.run_ids() == {"turn-4", "turn-5", "latest"}


def test_an_idle_session_goes_whole_unless_a_run_of_it_is_running(rows: Rows) -> None:
    idle = rows.session("idle")
    for i in range(4):
        rows.run(f"idle-{i}", 100 - i, session=idle, draft=i == 0)
    busy = rows.session("busy")
    rows.run("busy-old", 200, session=busy)
    rows.run("busy-running", 150, session=busy, status=RUNNING)
    recent = rows.session("recent")
    rows.run("recent-0", 95, session=recent)
    rows.run("recent-1", 80, session=recent)  # finished 80 days ago: not idle for 90 yet
    lone = rows.session("no-runs-left")  # its runs went before: an empty idle session
    report = pruner(rows.store, max_age_days=30, session_idle_days=90).run(NOW)
    assert rows.session_ids() == {busy, recent}
    assert lone not in rows.session_ids()
    assert rows.run_ids() == {"busy-old", "busy-running", "recent-0", "recent-1"}
    assert report.by_agent()["research"]["sessions"] == 2
    assert report.total("step_drafts") == 1
    assert report.total("runs") == 4


def test_an_idle_sessions_runs_are_counted_under_the_sessions_agent_type(rows: Rows) -> None:
    idle = rows.session("idle", agent="coder")
    rows.run("by-research", 100, session=idle, agent="research")
    report = pruner(rows.store, session_idle_days=90).run(NOW)
    assert rows.run_ids() == set() and rows.session_ids() == set()
    assert report.rows == {
        ("coder", "runs"): 1,
        ("coder", "steps"): STEPS_PER_RUN,
        ("coder", "accepted_runs"): 1,
        ("coder", "sessions"): 1,
    }


def test_each_transaction_deletes_at_most_a_batch(rows: Rows) -> None:
    for i in range(7):
        rows.run(f"old-{i}", 40 + i)
    idle = rows.session("idle")
    for i in range(3):
        rows.run(f"idle-{i}", 100 + i, session=idle)
    deleted: list[int] = []

    def progress(report: PruneReport) -> None:
        deleted.append(report.total("runs") + report.total("sessions"))

    report = pruner(rows.store, batch=2).run(NOW, progress=progress)
    steps = [b - a for a, b in zip([0, *deleted], deleted, strict=False)]
    assert max(steps) <= 2 and sum(steps) == 11  # 10 runs and 1 session
    assert report.transactions == len(deleted) >= 6
    assert rows.run_ids() == set() and rows.session_ids() == set()


def test_max_batches_ends_a_pass_early_and_the_next_pass_goes_on(rows: Rows) -> None:
    for i in range(7):
        rows.run(f"old-{i}", 40 + i)
    first = pruner(rows.store, batch=2).run(NOW, max_batches=2)
    assert first.transactions == 2
    # The session phase takes the first transaction (nothing idle), then one batch of runs,
    # the oldest first.
    assert rows.run_ids() == {f"old-{i}" for i in range(5)}
    pruner(rows.store, batch=2).run(NOW)
    assert rows.run_ids() == set()


def test_a_dry_run_deletes_nothing_and_counts_what_the_pass_deletes(rows: Rows) -> None:
    chat = rows.session("chat")
    for i in range(23):
        rows.run(f"turn-{i}", 70 - i, session=chat, draft=i == 0)
    rows.run("chat-latest", 2, session=chat)
    idle = rows.session("idle", agent="coder")
    for i in range(3):
        rows.run(f"idle-{i}", 120 - i, session=idle, agent="coder")
    for i in range(6):
        rows.run(f"coder-{i}", 10 + i, agent="coder")
        rows.run(f"research-{i}", 25 + 3 * i)
    rows.run("running", 300, status=RUNNING)
    settings = {"max_age_days": 30, "overrides": {"coder": AgentRetention(max_runs=4)}}
    before = rows.run_ids()
    dry = pruner(rows.store, **settings).run(NOW, dry_run=True)
    assert rows.run_ids() == before
    assert dry.dry_run and dry.total("runs") > 0
    real = pruner(rows.store, **settings, batch=3).run(NOW)
    assert dry.rows == real.rows
    assert real.total("runs") == len(before - rows.run_ids())


def test_a_stop_ends_the_pass_between_two_transactions(rows: Rows) -> None:
    for i in range(7):
        rows.run(f"old-{i}", 40 + i)
    stop = threading.Event()

    def progress(report: PruneReport) -> None:
        if report.total("runs"):
            stop.set()  # SIGTERM in the loop's process, after the first batch of runs

    report = pruner(rows.store, batch=2).run(NOW, progress=progress, stop=stop)
    assert report.total("runs") == 2
    assert len(rows.run_ids()) == 5
