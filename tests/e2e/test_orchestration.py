"""Orchestration through real workers and the scripted model on Triton: an orchestrator fans
out to three specialists on three queues and merges their answers; the same with the
specialists' worker SIGKILLed during the fan-in, the parent handed on exactly once."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.celery_ext.app import create_celery
from app.config import Settings
from app.memory.schema import run_children, waits
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: orchestrator
    tools: [delegate]
  - name: researcher
  - name: coder
  - name: writer
"""
SPECIALISTS = ["researcher", "coder", "writer"]
# Short redelivery and lease so a killed worker's steps come back within the test.
FAST_RECOVERY = {
    "AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "3",
    "AGENTQ_WORKER__STEP_TIMEOUT_S": "3",
    "AGENTQ_DURABILITY__RECOVERY_GRACE_S": "2",
    "AGENTQ_DURABILITY__RECOVERY_INTERVAL_S": "1",
}


def _orchestrate(delays_ms: list[int]) -> str:
    tasks = [
        {"agent": agent, "input": f"part {i} [delay:{delay}]"}
        for i, (agent, delay) in enumerate(zip(SPECIALISTS, delays_ms, strict=True))
    ]
    return f"plan it [tool:delegate {json.dumps({'tasks': tasks})}]"


@pytest.fixture
def configured(settings: Settings, tmp_path: Path) -> Settings:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    return settings.model_copy(update={"agents_file": agents_file})


def _merged(answer: str) -> list[dict[str, Any]]:
    assert answer.startswith("Answer: ")
    return json.loads(answer.removeprefix("Answer: "))


def _wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_orchestrator_fans_out_to_three_specialists_and_merges_their_answers(
    configured: Settings, start_worker: Any, store: Any
) -> None:
    celery = create_celery(configured)
    try:
        start_worker(["orchestrator"], settings=configured, celery=celery)
        start_worker(SPECIALISTS, settings=configured, celery=celery)
        result = submit("orchestrator", _orchestrate([300, 100, 200]), stream=True, celery=celery)
        merged = _merged(str(result.get(timeout=120)))
        events = list(result.events(timeout=30))
    finally:
        celery.close()
    # The parent's stream shows it waiting, then each child's step and end, then its answer.
    [waiting] = [e for e in events if e.kind == "waiting"]
    assert waiting.data["kind"] == "children" and len(waiting.data["children"]) == 3
    ends = {e.data["run_id"]: e.data for e in events if e.kind == "child" and "status" in e.data}
    assert sorted(ends) == sorted(waiting.data["children"])
    assert {(d["agent"], d["status"]) for d in ends.values()} == {
        (agent, "succeeded") for agent in SPECIALISTS
    }
    assert events[-1].kind == "end" and events[-1].data["status"] == "succeeded"
    assert [(m["agent"], m["answer"]) for m in merged] == [
        ("researcher", "Answer: PART 0"),
        ("coder", "Answer: PART 1"),
        ("writer", "Answer: PART 2"),
    ]
    parent = store.load_run(result.id)
    assert parent.status == "succeeded" and [s.step for s in parent.steps] == [0, 1]
    assert parent.child_tokens_in > 0 and parent.child_tokens_out > 0
    children = [store.load_run(m["run_id"]) for m in merged]
    assert [(c.agent, c.parent_id, c.lineage, c.status) for c in children] == [
        (agent, result.id, ["orchestrator"], "succeeded") for agent in SPECIALISTS
    ]
    # The step that delegated holds the answers now, as the model was shown them.
    assert parent.steps[0].tool_calls[0].result == merged


def test_a_specialist_worker_killed_during_the_fan_in_hands_the_parent_on_once(
    configured: Settings, start_worker: Any, store: Any
) -> None:
    celery = create_celery(configured)
    try:
        start_worker(["orchestrator"], FAST_RECOVERY, settings=configured, celery=celery)
        doomed = start_worker(SPECIALISTS, FAST_RECOVERY, settings=configured, celery=celery)
        result = submit("orchestrator", _orchestrate([100, 2000, 2000]), celery=celery)

        def one_child_ended() -> bool:
            rows = store.read(
                lambda conn: conn.execute(
                    select(run_children.c.status).where(run_children.c.parent_id == result.id)
                ).all()
            )
            return any(row.status == "succeeded" for row in rows)

        _wait_for(one_child_ended, 60, "the first specialist's answer")
        doomed.kill()  # two children in flight: their messages come back to another worker
        start_worker(SPECIALISTS, FAST_RECOVERY, settings=configured, celery=celery)
        merged = _merged(str(result.get(timeout=120)))
    finally:
        celery.close()
    assert [m.get("answer") for m in merged] == [
        "Answer: PART 0",
        "Answer: PART 1",
        "Answer: PART 2",
    ]
    parent = store.load_run(result.id)
    # Handed on once: one step after the fan-in, and the wait ended once, by its children.
    assert [s.step for s in parent.steps] == [0, 1]
    ended = store.read(
        lambda conn: conn.execute(
            select(waits.c.resolution, waits.c.pending).where(waits.c.run_id == result.id)
        ).all()
    )
    assert [(row.resolution, row.pending) for row in ended] == [("children", 0)]
