"""The session and step store on SQLite; :class:`StoreContract` is shared with PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from app.errors import StoreError
from app.memory.migrate import migrate
from app.memory.schema import metadata
from app.memory.sessions import NewRun, SessionStore, StepRecord, make_engine

SPAWN = multiprocessing.get_context("spawn")


def tool_step(step: int) -> StepRecord:
    return StepRecord(
        step=step,
        kind="tool",
        model_output=f'{{"tool": "add", "args": {{"a": {step}}}}}',
        tool="add",
        tool_args={"a": step},
        tool_result={"sum": step},
        tokens_in=10,
        tokens_out=5,
        latency_ms=12.5,
        worker="w1",
    )


def final_step(step: int) -> StepRecord:
    return StepRecord(step=step, kind="final", model_output="done", worker="w1")


def _commit_in_child(url: str, run_id: str, barrier: Any, results: Any) -> None:
    store = SessionStore.from_url(url, migrate=False)
    try:
        barrier.wait(timeout=60)
        results.put(store.commit_step(run_id, tool_step(0)))
    finally:
        store.close()


def _migrate_in_child(url: str, barrier: Any, results: Any) -> None:
    barrier.wait(timeout=60)
    try:
        migrate(url)
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(repr(exc))


def in_processes(target: Callable[..., None], args: tuple[Any, ...], count: int = 2) -> list[Any]:
    """Run ``target(*args, barrier, results)`` in ``count`` spawned processes released at once."""
    barrier = SPAWN.Barrier(count)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, barrier, results)) for _ in range(count)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return outcomes


class StoreContract:
    """Behaviour every backend must have. Subclasses provide ``store_url`` and ``empty_url``."""

    @pytest.fixture
    def session_store(self, store_url: str) -> Iterator[SessionStore]:
        store = SessionStore.from_url(store_url, migrate=False)
        yield store
        store.close()

    def test_start_run_is_idempotent(self, session_store: SessionStore) -> None:
        first = session_store.start_run("r1", "calc", {"q": "2+2"}, "s1")
        again = session_store.start_run("r1", "calc", {"q": "ignored"}, "s1")
        assert first == again
        assert (first.status, first.next_step, first.input, first.steps) == (
            "running",
            0,
            {"q": "2+2"},
            [],
        )
        assert first.created_at.tzinfo is not None

    def test_concurrent_starts_of_one_run_all_succeed(self, session_store: SessionStore) -> None:
        with ThreadPoolExecutor(8) as pool:
            states = list(
                pool.map(lambda _: session_store.start_run("r1", "calc", "hi", "s1"), range(8))
            )
        assert {s.id for s in states} == {"r1"}
        assert len(session_store.list_runs()) == 1

    def test_commit_step_once(self, session_store: SessionStore) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        assert session_store.commit_step("r1", tool_step(0)) is True
        assert session_store.commit_step("r1", tool_step(0)) is False
        state = session_store.load_run("r1")
        assert state is not None
        assert state.next_step == 1
        assert [s.step for s in state.steps] == [0]
        stored = state.steps[0]
        assert (stored.tool, stored.tool_args, stored.tool_result) == ("add", {"a": 0}, {"sum": 0})
        assert (stored.tokens_in, stored.tokens_out, stored.latency_ms) == (10, 5, 12.5)
        assert stored.created_at is not None

    def test_out_of_order_step_refused(self, session_store: SessionStore) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        assert session_store.commit_step("r1", tool_step(1)) is False
        assert session_store.count_steps("r1") == 0
        assert session_store.commit_step("r1", tool_step(0)) is True
        assert session_store.commit_step("r1", tool_step(2)) is False
        assert session_store.commit_step("r1", tool_step(1)) is True
        assert session_store.count_steps("r1") == 2

    def test_step_of_unknown_run_refused(self, session_store: SessionStore) -> None:
        assert session_store.commit_step("nope", tool_step(0)) is False
        assert session_store.load_run("nope") is None

    @pytest.mark.parametrize("answer", ["a plain string", {"total": 4, "parts": [1, 3]}, None])
    def test_final_answer_persists(self, session_store: SessionStore, answer: Any) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        session_store.commit_step("r1", tool_step(0))
        assert session_store.commit_step("r1", final_step(1), final_answer=answer) is True
        state = session_store.load_run("r1")
        assert state is not None
        assert (state.status, state.answer, state.next_step) == ("succeeded", answer, 2)
        assert state.finished_at is not None
        # A finished run takes no more steps.
        assert session_store.commit_step("r1", tool_step(2)) is False

    def test_failed_step_ends_run(self, session_store: SessionStore) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        error = StepRecord(step=0, kind="error", model_output="")
        assert session_store.commit_step("r1", error, failed_reason="budget exhausted")
        state = session_store.load_run("r1")
        assert state is not None
        assert (state.status, state.error, state.answer) == ("failed", "budget exhausted", None)
        assert state.steps[0].kind == "error"

    def test_fail_run_without_step(self, session_store: SessionStore) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        assert session_store.fail_run("r1", "no model server") is True
        assert session_store.fail_run("r1", "again") is False
        state = session_store.load_run("r1")
        assert state is not None
        assert (state.status, state.error, state.steps) == ("failed", "no model server", [])

    def test_history_oldest_first(self, session_store: SessionStore) -> None:
        for i in range(4):
            session_store.start_run(f"r{i}", "chat", f"question {i}", "s1")
        session_store.start_run("other", "chat", "elsewhere", "s2")
        for run_id in ("r0", "r1", "other"):
            session_store.commit_step(run_id, final_step(0), final_answer=f"answer {run_id}")
        session_store.fail_run("r2", "broken")  # failed runs are not history
        assert session_store.history("s1", before_run="r3") == [
            ("question 0", "answer r0"),
            ("question 1", "answer r1"),
        ]
        assert session_store.history("s1", before_run="r3", limit=1) == [
            ("question 1", "answer r1")
        ]
        assert session_store.history("s1", before_run="r1") == [("question 0", "answer r0")]
        assert session_store.history("s2") == [("elsewhere", "answer other")]

    def test_list_runs_filters(self, session_store: SessionStore) -> None:
        session_store.start_run("a1", "calc", "x", None)
        session_store.start_run("b1", "chat", "y", None)
        session_store.start_run("b2", "chat", "z", None)
        session_store.commit_step("b1", final_step(0), final_answer="ok")
        assert [r.id for r in session_store.list_runs()] == ["b2", "b1", "a1"]
        assert [r.id for r in session_store.list_runs(agent="chat", status="running")] == ["b2"]
        assert [r.id for r in session_store.list_runs(limit=1)] == ["b2"]

    def test_same_step_from_8_threads_commits_once(self, session_store: SessionStore) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        barrier = threading.Barrier(8)

        def commit(_: int) -> bool:
            barrier.wait(timeout=30)
            return session_store.commit_step("r1", tool_step(0))

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(commit, range(8)))
        assert outcomes.count(True) == 1
        assert session_store.count_steps("r1") == 1

    @pytest.mark.parametrize("session_id", [None, "s1"])
    def test_first_commit_creates_the_run_with_its_step(
        self, session_store: SessionStore, session_id: str | None
    ) -> None:
        session_store.start_run("earlier", "calc", "before", session_id)  # the session exists
        session_store.commit_step("earlier", final_step(0), final_answer="old")
        new = NewRun("r1", "calc", {"q": "2+2"}, session_id, {"max_steps": 3})
        assert session_store.commit_step("r1", tool_step(0), new_run=new) is True
        assert session_store.commit_step("r1", tool_step(0), new_run=new) is False
        state = session_store.load_run("r1")
        assert state is not None
        assert (state.status, state.next_step, state.input, state.budget) == (
            "running", 1, {"q": "2+2"}, {"max_steps": 3},
        )  # fmt: skip
        assert (state.session_id, state.created_at) == (session_id, new.created_at)
        assert [(s.step, s.tool_args, s.tool_result) for s in state.steps] == [
            (0, {"a": 0}, {"sum": 0})
        ]
        assert session_store.commit_step("r1", final_step(1), final_answer=4) is True
        if session_id is not None:
            assert session_store.history(session_id) == [("before", "old"), ({"q": "2+2"}, 4)]

    @pytest.mark.parametrize("session_id", [None, "s-new"])
    def test_a_run_that_ends_on_its_first_commit(
        self, session_store: SessionStore, session_id: str | None
    ) -> None:
        new = NewRun("r1", "calc", "hi", session_id)
        assert session_store.commit_step("r1", final_step(0), final_answer=[1], new_run=new)
        failed = NewRun("r2", "calc", "hi", session_id)
        error = StepRecord(step=0, kind="error", model_output="")
        assert session_store.commit_step(
            "r2", error, failed_reason="too long", error_type="budget_exceeded", new_run=failed
        )
        done, broken = session_store.load_run("r1"), session_store.load_run("r2")
        assert done is not None and broken is not None
        assert (done.status, done.answer, done.next_step) == ("succeeded", [1], 1)
        assert done.finished_at is not None and done.error is None
        assert (broken.status, broken.error, broken.error_type, broken.answer) == (
            "failed", "too long", "budget_exceeded", None,
        )  # fmt: skip

    def test_first_commit_of_a_started_run_goes_ahead(self, session_store: SessionStore) -> None:
        # The run is there (started by another path) but waits for step 0: the commit
        # with new_run still takes it, once.
        session_store.start_run("r1", "calc", "hi", None)
        new = NewRun("r1", "calc", "hi", None)
        assert session_store.commit_step("r1", tool_step(0), new_run=new) is True
        assert session_store.commit_step("r1", tool_step(0), new_run=new) is False
        assert session_store.count_steps("r1") == 1

    def test_first_commit_from_8_threads_creates_the_run_once(
        self, session_store: SessionStore
    ) -> None:
        barrier = threading.Barrier(8)

        def commit(_: int) -> bool:
            barrier.wait(timeout=30)
            new = NewRun("r1", "calc", "hi", "s1")
            return session_store.commit_step("r1", tool_step(0), new_run=new)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(commit, range(8)))
        assert outcomes.count(True) == 1
        assert session_store.count_steps("r1") == 1
        assert [r.id for r in session_store.list_runs()] == ["r1"]

    def test_same_step_from_2_processes_commits_once(
        self, session_store: SessionStore, store_url: str
    ) -> None:
        session_store.start_run("r1", "calc", "hi", None)
        outcomes = in_processes(_commit_in_child, (store_url, "r1"))
        assert sorted(outcomes) == [False, True]
        assert session_store.count_steps("r1") == 1

    def test_migration_matches_metadata(self, empty_url: str) -> None:
        migrate(empty_url)
        migrate(empty_url)  # a second run finds the schema current
        engine = make_engine(empty_url)
        try:
            with engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        finally:
            engine.dispose()

    def test_concurrent_migrations_from_2_processes(self, empty_url: str) -> None:
        assert in_processes(_migrate_in_child, (empty_url,)) == ["ok", "ok"]
        store = SessionStore.from_url(empty_url, migrate=False)
        try:
            assert store.start_run("r1", "calc", "hi", None).status == "running"
        finally:
            store.close()

    def test_missing_schema_raises_store_error(self, empty_url: str) -> None:
        store = SessionStore.from_url(empty_url, migrate=False)
        try:
            with pytest.raises(StoreError, match="agentq db upgrade"):
                store.load_run("r1")
        finally:
            store.close()


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def empty_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'agentq.sqlite3'}"

    @pytest.fixture
    def store_url(self, empty_url: str) -> str:
        migrate(empty_url)
        return empty_url

    def test_pragmas_set_on_every_connection(self, store_url: str) -> None:
        engine = make_engine(store_url)
        try:
            with engine.connect() as conn:
                pragmas = {
                    name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                    for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
                }
        finally:
            engine.dispose()
        assert pragmas == {
            "journal_mode": "wal",
            "synchronous": 1,
            "busy_timeout": 10000,
            "foreign_keys": 1,
        }

    def test_unreachable_database_raises_store_error(self, tmp_path: Path) -> None:
        store = SessionStore.from_url(
            f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", migrate=False
        )
        try:
            with pytest.raises(StoreError, match="unable to open database"):
                store.count_steps("r1")
        finally:
            store.close()
