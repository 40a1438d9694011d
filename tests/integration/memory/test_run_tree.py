"""A run's family read from a real store (SQLite and PostgreSQL): its sub-agent runs as a tree
in the order started, a child not started read as queued, a retry as a later attempt, the
open wait of a parked run only, and a tree cut at its size limit."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.memory import run_tree
from app.memory.endings import settle_child
from app.memory.records import (
    FailurePolicy,
    NewRun,
    RunStatus,
    StepKind,
    StepRecord,
    WaitKind,
    utc_now,
)
from app.memory.schema import run_children
from app.memory.sessions import SessionStore
from tests.fixtures.parked import park_on_children, park_on_signal

pytestmark = pytest.mark.integration


def shape(nodes: tuple[run_tree.ChildRun, ...]) -> list[tuple[str, str, int, list]]:
    return [(n.run_id, n.status, n.attempt, shape(n.children)) for n in nodes]


def test_the_tree_in_start_order_with_each_runs_own_status(sql_store: SessionStore) -> None:
    park_on_children(sql_store, "root", [("a", "helper", 1), ("b", "scout", 2), ("c", "scout", 3)])
    park_on_children(
        sql_store, "a", [("a1", "scout", 1)], agent="helper", lineage=["boss"], parent_id="root"
    )
    final = StepRecord(0, StepKind.FINAL, "done", (), 1, 1, 1.0, "w@h")
    assert sql_store.commit_step(
        "b", final, final_answer="b done", new_run=NewRun("b", "scout", 2, parent_id="root")
    )
    family = sql_store.read(lambda conn: run_tree.family(conn, "root", True))
    assert shape(family.children) == [
        ("a", "waiting", 1, [("a1", "queued", 1, [])]),
        ("b", "succeeded", 1, []),
        ("c", "queued", 1, []),
    ]
    assert family.children[1].answer == "b done"
    assert family.waiting_for is not None
    assert (family.waiting_for.kind, family.waiting_for.pending) == (WaitKind.CHILDREN, 2)
    assert not family.truncated
    assert sql_store.read(lambda conn: run_tree.family(conn, "root", False)).waiting_for is None


def test_a_retried_child_is_a_later_attempt(sql_store: SessionStore) -> None:
    park_on_children(sql_store, "root", [("a", "helper", 1)])
    with sql_store.write() as conn:  # as a worker's commit settles it, failure policy retry
        conn.execute(update(run_children).values(on_failure=FailurePolicy.RETRY, retries_left=1))
        effects = settle_child(conn, "a", RunStatus.FAILED, None, "boom", utc_now())
    [again] = effects.started
    family = sql_store.read(lambda conn: run_tree.family(conn, "root", True))
    assert shape(family.children) == [("a", "failed", 1, []), (again.run_id, "queued", 2, [])]
    assert family.children[0].error == "boom"


def test_a_signal_wait_and_a_tree_cut_at_its_limit(
    sql_store: SessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    park_on_signal(sql_store, "lone", name="go")
    wait = sql_store.read(lambda conn: run_tree.family(conn, "lone", True)).waiting_for
    assert wait is not None and (wait.kind, wait.name, wait.step) == (WaitKind.SIGNAL, "go", 0)
    park_on_children(sql_store, "root", [(f"k{i}", "helper", i) for i in range(3)])
    monkeypatch.setattr(run_tree, "MAX_NODES", 2)
    family = sql_store.read(lambda conn: run_tree.family(conn, "root", True))
    assert [c.run_id for c in family.children] == ["k0", "k1"]
    assert family.truncated
