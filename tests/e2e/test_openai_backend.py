"""Agents switched to an OpenAI-compatible server (NIM, vLLM) by configuration alone.

The server checks the protocol strictly (tests/fixtures/openai_server.py): tools are sent as
``tools``, the model's tool calls come back as ``tool_calls`` and results go back as
``role: "tool"`` messages, and each agent's ``model`` is the request's.
"""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from app.celery_ext.app import create_celery
from app.config import OpenAISettings, ReplicaSettings
from app.errors import RunFailedError
from app.local.workers import WorkerProcess
from app.producer.submit import submit
from tests.fixtures.openai_server import OpenAIServer

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: research
    tools: [calculator]
  - name: chat
    backend: openai
    tools: [calculator]
  - name: chat_small
    backend: openai
    model: scripted-small
  - name: ghost
    backend: openai
    model: no-such-model
"""


def test_agents_on_an_openai_compatible_server_speak_its_protocol(settings, tmp_path) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    with OpenAIServer(["scripted", "scripted-small"], require_key="sk-agentq-test") as server:
        openai = OpenAISettings(
            replicas=[
                ReplicaSettings(
                    url=server.base_url,
                    health_url=f"{server.root_url}/health",
                    metrics_url=f"{server.root_url}/metrics",
                )
            ],
            model="scripted",
            api_key=SecretStr("sk-agentq-test"),
        )
        configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
        celery = create_celery(configured)
        worker = WorkerProcess(
            configured, ["research", "chat", "chat_small", "ghost"], log_dir=tmp_path
        )
        try:
            worker.start(celery)
            user = 'add [tool:calculator {"expression": "40+2"}]'
            assert submit("chat", user, celery=celery).get(timeout=60) == "Answer: 42"
            asked, answered = server.requests  # the tool call, then the answer
            assert [t["function"]["name"] for t in asked.body["tools"]] == ["calculator"]
            assert asked.body["model"] == "scripted"
            assert answered.headers["authorization"] == "Bearer sk-agentq-test"
            (call,) = answered.messages[-2]["tool_calls"]
            assert call["function"]["name"] == "calculator"
            assert answered.messages[-1] == {
                "role": "tool",
                "tool_call_id": call["id"],
                "content": "42",
            }
            assert server.refused == []

            streamed = submit("chat", "[words:6] stream it", stream=True, celery=celery)
            assert list(streamed.stream(timeout=60)) == ["w1", " w2", " w3", " w4", " w5", " w6"]
            assert server.last_body["stream"] is True

            # An agent's model is the request's; one the server lacks fails the run, named.
            assert submit("chat_small", "hi", celery=celery).get(timeout=60) == "Answer: HI"
            assert server.last_body["model"] == "scripted-small"
            assert "tools" not in server.last_body
            with pytest.raises(RunFailedError, match="no model 'no-such-model'"):
                submit("ghost", "hi", celery=celery).get(timeout=60)

            # The Triton agent in the same worker does not touch the OpenAI server.
            requests = len(server.requests)
            assert submit("research", user, celery=celery).get(timeout=60) == "Answer: 42"
            assert len(server.requests) == requests
            assert "sk-agentq-test" not in worker.log_path.read_text()
        finally:
            worker.stop()
            celery.close()
