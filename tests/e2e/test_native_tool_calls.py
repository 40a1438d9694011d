"""Two tool calls in one reply, spoken natively to a strict OpenAI-compatible server, with
the worker SIGKILLed after the first call's result was kept: the next worker makes only the
second call again, asks the model nothing for that step, and the run ends with both results.

On the strict stand-in: the test needs a reply with two given calls at a given moment, which
a real small model does not make on demand (SmolLM2 on llama-cpp-python makes one per reply).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.celery_ext.app import create_celery
from app.config import OpenAISettings, ReplicaSettings
from app.memory.schema import tool_results
from app.producer.submit import submit
from tests.fixtures.openai_protocol import ChatCall, ScriptedCall, ScriptedReply
from tests.fixtures.openai_server import OpenAIServer
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: pair
    backend: openai
    tools: [test_mark, test_hold]
    max_steps: 3
"""
# Redelivery and lease short enough for the test, long enough that the first worker's step
# is not redelivered before the kill.
RECOVERY = {"AGENTQ_WORKER__VISIBILITY_TIMEOUT_S": "6", "AGENTQ_WORKER__STEP_TIMEOUT_S": "6"}


def test_a_killed_step_makes_only_the_calls_without_a_kept_result(
    settings, tmp_path: Path, start_worker, store
) -> None:
    marks, release = tmp_path / "marks.txt", tmp_path / "release"

    def script(call: ChatCall) -> ScriptedReply:
        results = call.tool_results()
        if not results:
            return ScriptedReply(
                tool_calls=[
                    ScriptedCall("test_mark", {"path": str(marks), "name": "a"}, id="call_a"),
                    ScriptedCall(
                        "test_hold",
                        {"path": str(marks), "name": "b", "release": str(release)},
                        id="call_b",
                    ),
                ]
            )
        return ScriptedReply(text=f"{results['call_a']} and {results['call_b']}")

    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    with OpenAIServer(["scripted"], script=script) as server:
        openai = OpenAISettings(replicas=[ReplicaSettings(url=server.base_url)], model="scripted")
        configured = settings.model_copy(
            update={
                "agents_file": agents_file,
                "openai": openai,
                "include": ["tests.fixtures.tools"],
            }
        )
        celery = create_celery(configured)
        try:
            first = start_worker(["pair"], env=RECOVERY, settings=configured, celery=celery)
            result = submit("pair", "mark a, then hold b", celery=celery)

            def first_result_kept() -> bool:
                with store.engine.connect() as conn:
                    kept = conn.execute(select(tool_results.c.call_id)).scalars().all()
                started = marks.exists() and "b started" in marks.read_text().split("\n")
                return kept == ["call_a"] and started

            wait_for(first_result_kept, 60, "call_a's result kept and call_b under way")
            first.kill()
            release.touch()
            start_worker(["pair"], env=RECOVERY, settings=configured, celery=celery)
            assert result.get(timeout=90) == "a marked and b marked"
        finally:
            celery.close()

        assert marks.read_text().split() == ["a", "b", "started", "b", "started", "b"]
        assert server.refused == []
        asked, answered = server.requests  # the step's one model call, then the answer
        assert [t["function"]["name"] for t in asked.body["tools"]] == ["test_mark", "test_hold"]
        assert [m["role"] for m in answered.messages[-3:]] == ["assistant", "tool", "tool"]
        assert [m["tool_call_id"] for m in answered.messages[-2:]] == ["call_a", "call_b"]
    run = store.load_run(result.id)
    assert [s.kind for s in run.steps] == ["tool", "final"]
    assert [(c.id, c.result, c.error) for c in run.steps[0].tool_calls] == [
        ("call_a", "a marked", False),
        ("call_b", "b marked", False),
    ]
    assert run.draft is None
    with store.engine.connect() as conn:  # the kept results went into the step
        assert conn.execute(select(tool_results.c.call_id)).all() == []
