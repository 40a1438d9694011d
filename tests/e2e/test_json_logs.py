"""AGENTQ_LOG_FORMAT=json: a real worker writes one JSON object per line, and lines logged
inside a step carry its run id, agent type and step."""

from __future__ import annotations

import json

import pytest

from app.constants import TASK_RUN_AGENT
from app.errors import RunFailedError
from app.local.processes import wait_until
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

PASSWORD = "hunter2-do-not-log"


def test_worker_logs_are_json_lines_tagged_with_their_step(celery_app, start_worker) -> None:
    env = {"AGENTQ_LOG_FORMAT": "json", "AGENTQ_WORKER__LOG_EACH_STEP": "true"}
    worker = start_worker(["research"], env=env)
    # Two steps; the answer is the tool's result, so only the arguments could leak PASSWORD.
    user = f'sum [tool:calculator {{"expression": "2+2"}}] with password={PASSWORD}'
    run = submit("research", user, celery=celery_app)
    assert run.get(timeout=60) == "Answer: 4"
    # A poison message (an argument no step takes) is dead-lettered, logged inside its step.
    poison = celery_app.send_task(
        TASK_RUN_AGENT,
        kwargs={"agent": "research", "input": "x", "colour": "blue"},
        queue="agent.research",
    )
    with pytest.raises(RunFailedError, match="dead-lettered"):
        poison.get(timeout=60)

    def logged(fragment: str) -> bool:
        return fragment in worker.log_path.read_text()

    assert wait_until(lambda: logged("dead-lettered at step 0"), 10)
    text = worker.log_path.read_text()  # read before stopping: shutdown prints to stdout
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(line, dict) for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"].endswith(" ready.") for line in lines)

    (letter,) = [line for line in lines if "dead-lettered at step" in line["message"]]
    assert letter["level"] == "ERROR"
    assert (letter["run_id"], letter["agent"], letter["step"]) == (poison.id, "research", 0)
    # Celery's own task lines (AGENTQ_WORKER__LOG_EACH_STEP) name their task.
    task_lines = [line for line in lines if line["logger"].startswith("celery.")]
    assert {run.id, f"{run.id}:1", poison.id} <= {line.get("task_id") for line in task_lines}
    assert PASSWORD.lower() not in text.lower()


def test_text_logs_stay_celerys_by_default(celery_app, start_worker) -> None:
    worker = start_worker(["research"])
    assert submit("research", "hello", celery=celery_app).get(timeout=60) == "Answer: HELLO"
    text = worker.log_path.read_text()
    assert " ready." in text and not text.lstrip().startswith("{")
