"""What a parked run's changes publish, on the real Redis and SQLite: sub-agent runs' first
messages, a resumed run's next step (once), and what recovery publishes when the process that
committed the change died before publishing it."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.celery_ext.backlog import priority_lists
from app.celery_ext.envelope import step_task_id
from app.config import DurabilitySettings, Settings
from app.constants import published_key, queued_key
from app.memory import waits
from app.memory.records import (
    CallRecord,
    NewRun,
    RunStatus,
    StepKind,
    StepRecord,
    WaitKind,
    utc_now,
)
from app.memory.schema import accepted_runs, steps
from app.memory.sessions import SessionStore
from app.tasks.effects import carry_out
from app.tasks.recovery import Recoverer, message_task_id

pytestmark = pytest.mark.integration


@pytest.fixture
def psettings(redis_client, redis_url, sqlite_url) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=sqlite_url,
        durability=DurabilitySettings(recovery_grace_s=30),
    )


@pytest.fixture
def pcelery(psettings: Settings):
    from app.celery_ext.app import create_celery

    app = create_celery(psettings)
    yield app
    app.close()


@pytest.fixture
def pstore(psettings: Settings):
    store = SessionStore.from_url(psettings.database_url, migrate=True)
    yield store
    store.close()


def queued(client, queue: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for name in priority_lists(queue):
        for raw in client.lrange(name, 0, -1):
            found[message_task_id(raw)] += 1
    return found


def delegate(store: SessionStore, n: int) -> waits.Effects:
    """``boss`` (a coder run) parks on ``n`` research runs, as a worker's commit does."""
    children = tuple(
        waits.Child(
            f"c{i}",
            "research",
            f"task {i}",
            {
                "agent": "research",
                "input": f"task {i}",
                "session_id": None,
                "parent": {"run": "boss", "lineage": ["coder"]},
            },
            "call_0",
            i,
        )
        for i in range(n)
    )
    message = {"agent": "coder", "session_id": None, "run_id": "boss", "step": 1}
    effects = waits.Effects()
    record = StepRecord(0, StepKind.TOOL, "", (CallRecord("call_0", "delegate", {}, "wait"),))
    store.commit_step(
        "boss", record, new_run=NewRun("boss", "coder", "plan"),
        park=waits.Park(WaitKind.CHILDREN, "call_0", message, children=children), effects=effects,
    )  # fmt: skip
    return effects


def end(store: SessionStore, i: int) -> waits.Effects:
    effects = waits.Effects()
    store.commit_step(
        f"c{i}", StepRecord(0, StepKind.FINAL, "x"), final_answer=f"a{i}",
        new_run=NewRun(f"c{i}", "research", f"task {i}", parent_id="boss"), effects=effects,
    )  # fmt: skip
    return effects


def age(store: SessionStore, seconds: float = 120) -> None:
    old = utc_now() - timedelta(seconds=seconds)
    with store.write() as conn:
        conn.execute(update(steps).values(created_at=old))
        conn.execute(update(accepted_runs).values(created_at=old))


def test_carrying_out_publishes_children_then_the_resumed_parent_once(
    pcelery, pstore, redis_client
) -> None:
    carry_out(pcelery, delegate(pstore, 2))
    assert queued(redis_client, "agent.research") == {"c0": 1, "c1": 1}
    indexed = {v.decode() for v in redis_client.lrange(queued_key("research"), 0, -1)}
    assert indexed == {"c0", "c1"}  # listed as queued runs, as a submit lists them
    assert not end(pstore, 0)
    last = end(pstore, 1)
    carry_out(pcelery, last)
    assert queued(redis_client, "agent.coder") == {step_task_id("boss", 1): 1}
    assert redis_client.exists(published_key("boss", 1))


def test_recovery_publishes_what_a_dead_process_committed_but_never_published(
    pcelery, pstore, redis_client
) -> None:
    delegate(pstore, 2)  # the worker died after the commit: no child was published
    age(pstore)
    report = Recoverer.for_app(pcelery, pstore).run_once()
    assert report is not None and {w.run_id for w in report.published} == {"c0", "c1"}
    assert queued(redis_client, "agent.research") == {"c0": 1, "c1": 1}
    # A parked run is not stalled: nothing of the parent's is published while it waits.
    assert queued(redis_client, "agent.coder") == {}
    end(pstore, 0)
    end(pstore, 1)  # the last child's worker died after its commit: the parent has no message
    assert pstore.load_run("boss").status is RunStatus.RUNNING
    age(pstore)
    report = Recoverer.for_app(pcelery, pstore).run_once()
    assert report is not None and [(w.run_id, w.step) for w in report.published] == [("boss", 1)]
    again = Recoverer.for_app(pcelery, pstore).run_once()
    assert again is not None and again.published == []
    assert queued(redis_client, "agent.coder") == {step_task_id("boss", 1): 1}


def test_the_recover_cronjob_resumes_a_due_timer_so_its_step_wakes_a_worker(
    psettings, pstore, redis_client, monkeypatch
) -> None:
    from click.testing import CliRunner

    from app.cli import main

    message = {"agent": "coder", "session_id": None, "run_id": "nap", "step": 1}
    record = StepRecord(0, StepKind.TOOL, "", (CallRecord("c", "sleep", {}, "wait"),))
    due = utc_now() - timedelta(seconds=1)
    pstore.commit_step(
        "nap", record, new_run=NewRun("nap", "coder", "x"),
        park=waits.Park(WaitKind.TIMER, "c", message, due_at=due),
    )  # fmt: skip
    monkeypatch.setenv("AGENTQ_REDIS_URL", psettings.redis_url)
    monkeypatch.setenv("AGENTQ_DATABASE_URL", psettings.database_url)
    result = CliRunner().invoke(main, ["maintenance", "recover", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["due_waits_ended"] == 1
    assert queued(redis_client, "agent.coder") == {step_task_id("nap", 1): 1}
    assert pstore.load_run("nap").steps[0].tool_calls[0].result == {"slept": True}
