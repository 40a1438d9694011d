"""A session's history through the Redis cache, and its runs one at a time: real Redis, and the
store on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from sqlalchemy import event

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import SessionSettings, Settings
from app.constants import history_keys
from app.inference import text_protocol
from app.inference.backend import ChatRequest, Completion
from app.memory.history import SessionHistory, claim_session
from app.memory.records import ErrorType, NewRun
from app.memory.sessions import SessionStore, StepRecord
from app.tasks.runner import Outcome, StepMessage, StepRunner

pytestmark = pytest.mark.integration

REGISTRY = AgentRegistry([AgentSpec(name="chat", tools=("calculator",), max_steps=4)])


@pytest.fixture
def store(sql_store: SessionStore) -> SessionStore:
    """The store on SQLite, then on PostgreSQL."""
    return sql_store


class SqlReads:
    """Counts the SELECTs a store's engine runs."""

    def __init__(self, store: SessionStore) -> None:
        self.count = 0
        event.listen(store.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.count += 1


def succeed(store: SessionStore, run_id: str, question: str, answer: str) -> None:
    assert claim_session(store, NewRun(run_id, "chat", question, "s1")).held_by(run_id)
    final = StepRecord(step=0, kind="final", model_output=answer)
    assert store.commit_step(run_id, final, final_answer=answer, session_id="s1")


def test_a_step_reads_the_history_from_redis_once_cached(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    succeed(store, "r1", "q1", "a1")
    succeed(store, "r2", "q2", "a2")
    assert claim_session(store, NewRun("r3", "chat", "q3", "s1")).held_by("r3")
    history = SessionHistory(store, redis_client, SessionSettings())
    reads = SqlReads(store)
    state = store.load_run("r3")
    assert state is not None and state.history_version == 2
    reads.count = 0
    assert history.of(state) == [("q1", "a1"), ("q2", "a2")]
    assert reads.count == 1  # a miss: read from SQL, then cached
    assert history.of(state) == [("q1", "a1"), ("q2", "a2")]
    assert reads.count == 1  # a hit: no SQL
    assert all(redis_client.ttl(key) > 0 for key in history_keys("s1"))


def test_a_run_that_succeeds_makes_the_cached_history_unused(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    history = SessionHistory(store, redis_client, SessionSettings())
    succeed(store, "r1", "q1", "a1")
    assert claim_session(store, NewRun("r2", "chat", "q2", "s1")).held_by("r2")
    assert history.of(store.load_run("r2")) == [("q1", "a1")]  # cached at version 1
    final = StepRecord(step=0, kind="final", model_output="a2")
    assert store.commit_step("r2", final, final_answer="a2", session_id="s1")
    assert claim_session(store, NewRun("r3", "chat", "q3", "s1")).held_by("r3")
    # The cache still holds version 1; the step read version 2 with its run: not used.
    assert history.of(store.load_run("r3")) == [("q1", "a1"), ("q2", "a2")]


def test_the_run_that_succeeds_adds_its_turn_so_the_next_run_reads_no_sql(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    history = SessionHistory(store, redis_client, SessionSettings(history_turns=2))
    succeed(store, "r1", "q1", "a1")
    for n in (2, 3):
        run_id = f"r{n}"
        assert claim_session(store, NewRun(run_id, "chat", f"q{n}", "s1")).held_by(run_id)
        state = store.load_run(run_id)
        assert state is not None
        reads = SqlReads(store)
        seen = history.of(state)
        assert reads.count == (1 if n == 2 else 0)  # filled once, then kept up to date
        assert seen == [(f"q{i}", f"a{i}") for i in range(max(1, n - 2), n)]
        moved: list[int] = []
        final = StepRecord(step=0, kind="final", model_output=f"a{n}")
        assert store.commit_step(
            run_id, final, final_answer=f"a{n}", session_id="s1", history=moved
        )
        assert moved == [n]
        history.add(state, moved[0], f"a{n}")
    assert claim_session(store, NewRun("r4", "chat", "q4", "s1")).held_by("r4")
    reads = SqlReads(store)
    assert history.of(store.load_run("r4")) == [("q2", "a2"), ("q3", "a3")]  # the last two
    assert reads.count == 1  # the load above only
    # An add for a version the cache does not hold just before is not applied.
    stale = store.load_run("r3")
    history.add(stale, 9, "wrong")
    assert history.of(store.load_run("r4")) == [("q2", "a2"), ("q3", "a3")]


def test_the_cache_off_reads_sql_every_step(store: SessionStore, redis_client: redis.Redis) -> None:
    succeed(store, "r1", "q1", "a1")
    assert claim_session(store, NewRun("r2", "chat", "q2", "s1")).held_by("r2")
    history = SessionHistory(store, redis_client, SessionSettings(history_cache=False))
    reads = SqlReads(store)
    state = store.load_run("r2")
    reads.count = 0
    for _ in range(3):
        assert history.of(state) == [("q1", "a1")]
    assert reads.count == 3 and not redis_client.exists(*history_keys("s1"))


def test_only_the_last_turns_are_shown_and_a_run_sees_none_that_started_after_it(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    history = SessionHistory(store, redis_client, SessionSettings(history_turns=2))
    for i in range(3):
        succeed(store, f"r{i}", f"q{i}", f"a{i}")
    assert claim_session(store, NewRun("late", "chat", "q", "s1")).held_by("late")
    assert history.of(store.load_run("late")) == [("q1", "a1"), ("q2", "a2")]
    # A run created before r1 (it waited) that runs now: only r0 started before it.
    early = store.load_run("r0")
    assert early is not None
    assert history.of(early) == []
    r1 = store.load_run("r1")
    assert history.of(r1) == [("q0", "a0")]  # the cached last two hold r1, r2: SQL is asked


class SessionModel:
    """A model for concurrent runs of one session: each run calls the calculator, then answers
    with its input; it records, in one global order, each call's run input and the history its
    prompt showed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []  # (run input, history)

    def generate(self, request: ChatRequest, **_route: Any) -> Completion:
        messages = request.messages
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        current = users[-1]
        history = [
            (messages[i].content, messages[i + 1].content)
            for i in users[:-1]
            if messages[i + 1].role == "assistant"
        ]
        asked = messages[current].content
        with self.lock:
            self.calls.append((asked, history))
        time.sleep(0.005)  # long enough for other runs' steps to come in between
        if current == len(messages) - 1:
            text, calls = text_protocol.parse(
                '{"tool": "calculator", "args": {"expression": "1+1"}}'
            )
            return Completion(text, 1, 1, 0.0, "fake", calls)
        return Completion(f"Answer: {asked}", 1, 1, 0.0, "fake")

    def stream(self, request: ChatRequest, **_route: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def health(self) -> bool:
        return True

    def missing_models(self, models: Any) -> list[str]:
        return []

    def close(self) -> None:
        pass


def run_to_the_end(runner: StepRunner, run_id: str, question: str) -> int:
    """Drive one run's steps as a worker would; how many times its session was busy."""
    step, busy = 0, 0
    for attempt in itertools.count():
        assert attempt < 5000, f"run {run_id} never got its session"
        result = runner.run_step(StepMessage(run_id, "chat", step, question, "s1"))
        if result.outcome in (Outcome.BUSY, Outcome.SESSION_BUSY):
            busy += result.outcome is Outcome.SESSION_BUSY
            time.sleep(0.002)
            continue
        if result.outcome is Outcome.DONE:
            return busy
        assert result.outcome is Outcome.NEXT, result
        step = result.next_step or 0
    raise AssertionError("unreachable")


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_concurrent_runs_of_a_session_go_one_at_a_time_and_never_see_a_stale_history(
    store: SessionStore, redis_client: redis.Redis, cached: bool
) -> None:
    settings = Settings(_env_file=None, sessions=SessionSettings(history_cache=cached))
    model = SessionModel()
    runner = StepRunner(settings, REGISTRY, store, redis_client, {"triton": model}, "w1")
    questions = {f"run{i}": f"question {i}" for i in range(6)}
    with ThreadPoolExecutor(len(questions)) as pool:
        busy = list(pool.map(lambda item: run_to_the_end(runner, *item), questions.items()))
    assert sum(busy) > 0  # they did contend for the session
    # Never interleaved: each run's two model calls come one after the other.
    order = [asked for asked, _ in model.calls]
    assert len(order) == 2 * len(questions)
    assert all(order[i] == order[i + 1] for i in range(0, len(order), 2)), order
    # Each step saw every earlier run of the session, in order, and nothing stale.
    finished: list[tuple[str, str]] = []
    for i in range(0, len(order), 2):
        asked = order[i]
        assert model.calls[i][1] == finished and model.calls[i + 1][1] == finished
        finished.append((asked, f"Answer: {asked}"))
    runs = store.list_runs(session_id="s1")
    assert {r.status for r in runs} == {"succeeded"} and len(runs) == len(questions)


def test_a_run_fails_at_once_when_its_session_is_busy_and_the_setting_says_fail(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    settings = Settings(_env_file=None, sessions=SessionSettings(busy="fail"))
    runner = StepRunner(settings, REGISTRY, store, redis_client, {"triton": SessionModel()}, "w1")
    assert runner.run_step(StepMessage("first", "chat", 0, "one", "s1")).outcome is Outcome.NEXT
    refused = runner.run_step(StepMessage("second", "chat", 0, "two", "s1"))
    assert refused.outcome is Outcome.FAILED
    assert refused.error_type is ErrorType.SESSION_BUSY
    assert "its run 'first' is running" in (refused.reason or "")
    stored = store.load_run("second")
    assert stored is not None and stored.error_type == "session_busy"
    # The first run goes on and ends; the session is free again.
    assert runner.run_step(StepMessage("first", "chat", 1, session_id="s1")).outcome is (
        Outcome.DONE
    )
    third = runner.run_step(StepMessage("third", "chat", 0, "three", "s1"))
    assert third.outcome is Outcome.NEXT
