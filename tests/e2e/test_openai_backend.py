"""An agent switched to an OpenAI-compatible server (NIM, vLLM) by configuration alone."""

from __future__ import annotations

import pytest

from app.celery_ext.app import create_celery
from app.config import OpenAISettings, ReplicaSettings
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
"""


def test_same_agent_loop_on_an_openai_compatible_server(settings, tmp_path) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    with OpenAIServer(require_key="sk-agentq-test") as server:
        openai = OpenAISettings(
            replicas=[
                ReplicaSettings(
                    url=server.base_url,
                    health_url=f"{server.root_url}/health",
                    metrics_url=f"{server.root_url}/metrics",
                )
            ],
            model="scripted",
            api_key="sk-agentq-test",
        )
        configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
        celery = create_celery(configured)
        worker = WorkerProcess(configured, ["research", "chat"], log_dir=tmp_path)
        try:
            worker.start(celery)
            user = 'add [tool:calculator {"expression": "40+2"}]'
            assert submit("chat", user, celery=celery).get(timeout=60) == "Answer: 42"
            assert server.requests == 2  # the tool call, then the answer
            assert server.last_headers["authorization"] == "Bearer sk-agentq-test"
            assert server.last_body["messages"][-1] == {
                "role": "user",
                "content": "Tool result: 42",
            }

            streamed = submit("chat", "[words:6] stream it", stream=True, celery=celery)
            assert list(streamed.stream(timeout=60)) == ["w1", " w2", " w3", " w4", " w5", " w6"]
            assert server.last_body["stream"] is True

            # The Triton agent in the same worker does not touch the OpenAI server.
            requests = server.requests
            assert submit("research", user, celery=celery).get(timeout=60) == "Answer: 42"
            assert server.requests == requests
            assert "sk-agentq-test" not in worker.log_path.read_text()
        finally:
            worker.stop()
            celery.close()
