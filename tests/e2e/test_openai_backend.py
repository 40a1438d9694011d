"""Agents switched to an OpenAI-compatible server by configuration alone.

On a real server (llama-cpp-python's, serving SmolLM2-135M-Instruct behind an API key): an
agent required to call a tool gets a call with schema-valid arguments, the worker runs it,
sends the result back as a ``role: "tool"`` message and the model answers, unary and
streamed; the steps, calls and counts are in SQL; a Triton agent in the same worker is
untouched and the key never reaches the log. What the model says is its own.

On the strict stand-in (tests/fixtures/openai_server.py), what a real server cannot be made
to do: each agent's ``model`` is checked in the request, and a model the server lacks (HTTP
404 ``model_not_found``; llama-cpp-python answers any name with its one model) fails the run.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from pydantic import SecretStr

from app.agents.tools import TOOLS
from app.celery_ext.app import create_celery
from app.config import OpenAISettings, ReplicaSettings
from app.errors import RunFailedError
from app.local.llama_server import LlamaServer
from app.local.workers import WorkerProcess
from app.producer.submit import submit
from tests.fixtures.llama_server import LLAMA_MODEL
from tests.fixtures.openai_server import OpenAIServer

pytestmark = pytest.mark.e2e

KEY = "sk-agentq-test"
REAL_AGENTS = """\
agents:
  - name: research
    tools: [calculator]
  - name: calc
    backend: openai
    system_prompt: You are a helpful assistant. Use the calculator for arithmetic.
    tools: [calculator]
    tool_choice: [calculator, none]
    max_tokens: 24
"""


def test_agents_on_a_real_openai_compatible_server_call_tools_and_stream(
    settings, store, tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(REAL_AGENTS)
    with LlamaServer(alias=LLAMA_MODEL, api_key=KEY, log_path=tmp_path / "llama.log") as server:
        openai = OpenAISettings(
            replicas=[ReplicaSettings(url=server.base_url)],
            model=LLAMA_MODEL,
            api_key=SecretStr(KEY),
        )
        configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
        celery = create_celery(configured)
        worker = WorkerProcess(configured, ["research", "calc"], log_dir=tmp_path)
        try:
            worker.start(celery)
            unary = submit("calc", "What is 40+2?", celery=celery)
            answers = {unary.id: unary.get(timeout=60)}
            streamed = submit("calc", "What is 40+2?", stream=True, celery=celery)
            pieces = list(streamed.stream(timeout=60))
            answers[streamed.id] = streamed.get(timeout=30)
            assert "".join(pieces) == answers[streamed.id]

            # The Triton agent in the same worker is untouched.
            user = 'add [tool:calculator {"expression": "40+2"}]'
            assert submit("research", user, celery=celery).get(timeout=60) == "Answer: 42"
            assert KEY not in worker.log_path.read_text()
        finally:
            worker.stop()
            celery.close()

    calculator = TOOLS["calculator"].schema().parameters
    for run_id, answer in answers.items():
        run = store.load_run(run_id)
        assert (run.status, run.answer) == ("succeeded", answer)
        tool_step, final = run.steps
        assert (tool_step.kind, final.kind) == ("tool", "final")
        (call,) = tool_step.tool_calls
        assert call.name == "calculator" and call.id  # the server's id, sent back with the result
        jsonschema.validate(call.args, calculator)
        assert call.result is not None  # its value, or the tool's error the model was shown
        assert final.tool_calls == ()
        for step in run.steps:
            assert step.tokens_in > 0 and step.tokens_out > 0


STAND_IN_AGENTS = """\
agents:
  - name: chat_small
    backend: openai
    model: scripted-small
  - name: ghost
    backend: openai
    model: no-such-model
"""


def test_each_agents_model_is_the_requests_and_a_missing_one_fails_the_run(
    settings, tmp_path: Path
) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(STAND_IN_AGENTS)
    with OpenAIServer(["scripted", "scripted-small"]) as server:
        openai = OpenAISettings(replicas=[ReplicaSettings(url=server.base_url)], model="scripted")
        configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
        celery = create_celery(configured)
        worker = WorkerProcess(configured, ["chat_small", "ghost"], log_dir=tmp_path)
        try:
            worker.start(celery)
            assert submit("chat_small", "hi", celery=celery).get(timeout=60) == "Answer: HI"
            assert server.last_body["model"] == "scripted-small"
            assert "tools" not in server.last_body
            with pytest.raises(RunFailedError, match="no model 'no-such-model'"):
                submit("ghost", "hi", celery=celery).get(timeout=60)
            assert server.refused[-1].status == 404
        finally:
            worker.stop()
            celery.close()
