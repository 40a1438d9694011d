"""Dead-letter storage: one entry per run, newest first, removed only on request."""

from __future__ import annotations

import fakeredis

from app.memory.sessions import SessionStore
from app.tasks import dead_letters as dlq


def letter(run_id: str, agent: str = "research", at: float = 1.0, step: int = 0):
    return dlq.DeadLetter(
        run_id=run_id,
        agent=agent,
        step=step,
        kind=dlq.DeadLetterKind.POISON,
        reason="ValueError: boom",
        retries=0,
        kwargs={"agent": agent, "input": "x"},
        task_id=run_id,
        failed_at=at,
        traceback="Traceback ...",
    )


def test_entries_round_trip_newest_first_and_filter_by_agent():
    client = fakeredis.FakeRedis()
    dlq.push(client, letter("r1", at=1))
    dlq.push(client, letter("r2", agent="coder", at=3))
    dlq.push(client, letter("r3", at=2))
    assert [x.run_id for x in dlq.list_letters(client)] == ["r2", "r3", "r1"]
    assert [x.run_id for x in dlq.list_letters(client, agent="research")] == ["r3", "r1"]
    assert [x.run_id for x in dlq.list_letters(client, limit=1)] == ["r2"]
    assert dlq.get(client, "r3") == letter("r3", at=2)
    assert dlq.count(client) == 3


def test_a_run_has_one_entry_and_nothing_is_capped():
    client = fakeredis.FakeRedis()
    for i in range(500):
        dlq.push(client, letter(f"r{i}", at=i))
    dlq.push(client, letter("r7", at=1000, step=3))
    assert dlq.count(client) == 500
    assert dlq.list_letters(client, limit=1)[0] == letter("r7", at=1000, step=3)


def test_remove():
    client = fakeredis.FakeRedis()
    for i in range(3):
        dlq.push(client, letter(f"r{i}", at=i))
    assert dlq.remove(client, ["r0", "missing"]) == 1
    assert dlq.get(client, "r0") is None
    assert [x.run_id for x in dlq.list_letters(client)] == ["r2", "r1"]
    assert dlq.remove(client, ["r1", "r2"]) == 2
    assert dlq.count(client) == 0 and dlq.list_letters(client) == []


def test_a_dead_lettered_first_step_is_stored_as_its_tenants_run(tmp_path):
    store = SessionStore.from_url(f"sqlite:///{tmp_path / 's.sqlite3'}", migrate=True)
    try:
        error = dlq.dead_letter(fakeredis.FakeRedis(), store, letter("r-acme"), "hi", None, "acme")
        stored = store.load_run("r-acme")
        assert stored is not None and stored.tenant == "acme"
        assert stored.error_type == "dead_lettered" and str(error).startswith("dead-lettered")
    finally:
        store.close()
