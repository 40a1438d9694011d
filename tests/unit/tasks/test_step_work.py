"""What a step asks of the store and Redis, statement by statement: a durable step costs
these and no more (a count that grows is a cost added to every step of every run)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from sqlalchemy import event

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures.backends import CALC, ReplyList

REGISTRY = AgentRegistry([AgentSpec(name="research", tools=("calculator",), max_steps=3)])


class CountingRedis(fakeredis.FakeRedis):  # type: ignore[misc]
    """A Redis client that keeps the name of each command it sends (a pipeline: 'pipeline')."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return super().execute_command(*args, **options)

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.sent.append("pipeline")
        return super().pipeline(*args, **kwargs)


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


@pytest.fixture
def statements(store: SessionStore) -> list[str]:
    """Every SQL statement SQLite runs for ``store`` from now on, its first word or two."""
    ran: list[str] = []

    def trace(sql: str) -> None:
        words = sql.split()
        ran.append(" ".join(words[:2]) if words[0] in ("INSERT", "BEGIN") else words[0])

    @event.listens_for(store.engine, "connect")
    def _traced(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(trace)

    store.engine.dispose()  # connections opened from now on are traced
    return ran


def runner(store: SessionStore, backend: ReplyList, client: CountingRedis) -> StepRunner:
    return StepRunner(Settings(), REGISTRY, store, client, {"triton": backend}, "w1")


def test_a_runs_first_step_is_one_transaction_of_two_inserts_and_no_redis(store, statements):
    client = CountingRedis()
    msg = StepMessage("run", "research", 0, "hi", first=True)
    assert runner(store, ReplyList("Answer: ok"), client).run_step(msg).outcome is Outcome.DONE
    assert statements == ["BEGIN IMMEDIATE", "INSERT INTO", "INSERT INTO", "COMMIT"]
    assert client.sent == []  # no lease: the commit that creates the run guards it


def test_a_later_step_loads_once_commits_once_and_takes_and_gives_back_its_lease(store, statements):
    client = CountingRedis()
    r = runner(store, ReplyList(CALC, "Answer: 5"), client)
    assert r.run_step(StepMessage("run", "research", 0, "add", first=True)).outcome is Outcome.NEXT
    statements.clear()
    client.sent.clear()
    assert r.run_step(StepMessage("run", "research", 1)).outcome is Outcome.DONE
    assert statements == ["SELECT", "BEGIN IMMEDIATE", "UPDATE", "INSERT INTO", "COMMIT"]
    assert client.sent == ["SET", "EVALSHA"]  # the lease, taken and given back
