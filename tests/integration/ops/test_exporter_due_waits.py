"""The exporter counts parked runs whose timer has fallen due in the backlog KEDA scales on
(parked runs not yet due are not counted), read from the real session store."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.memory import waits
from app.memory.records import CallRecord, NewRun, StepKind, StepRecord, WaitKind, utc_now
from app.memory.sessions import SessionStore
from app.ops.exporter import Exporter

pytestmark = pytest.mark.integration


def park_timer(store: SessionStore, run_id: str, agent: str, due_in_s: float) -> None:
    message = {"agent": agent, "session_id": None, "run_id": run_id, "step": 1}
    record = StepRecord(0, StepKind.TOOL, "", (CallRecord("c", "sleep", {}, "wait"),))
    due = utc_now() + timedelta(seconds=due_in_s)
    assert store.commit_step(
        run_id, record, new_run=NewRun(run_id, agent, "x"),
        park=waits.Park(WaitKind.TIMER, "c", message, due_at=due),
    )  # fmt: skip


def samples(port: int) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("agent", ""))] = sample.value
    return found


def test_due_timers_are_backlog_and_parked_runs_are_not(settings: Settings) -> None:
    store = SessionStore.from_url(settings.database_url, migrate=True)
    try:
        park_timer(store, "due-1", "research", -5)
        park_timer(store, "due-2", "research", -1)
        park_timer(store, "later", "research", 3600)
        park_timer(store, "coder-later", "coder", 3600)
    finally:
        store.close()
    exporter = Exporter(settings).start(port=0)
    try:
        found = samples(exporter.port)
    finally:
        exporter.stop()
    assert found[("agentq_exporter_store_up", "")] == 1
    assert found[("agentq_backlog_due_waits", "research")] == 2
    assert found[("agentq_backlog", "research")] == 2  # no message queued: the due timers
    assert found[("agentq_backlog_due_waits", "coder")] == 0
    assert found[("agentq_backlog", "coder")] == 0
