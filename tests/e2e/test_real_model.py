"""An agent on the local real model (SmolLM2-135M-Instruct served by llama.cpp behind the
TensorRT-LLM ensemble interface on Triton), through real Redis, a real worker and SQL.

The agent must call a tool in its first reply and answer in the next (tool_choice
[required, none]): the worker renders its conversation with the model's own ChatML template
(tools described the Hermes way, the template knows none), the first reply is constrained by
guided decoding to the call's JSON Schema, and the call is run and recorded. What the model
says is its own; its shape is what is checked.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from app.agents.tools import TOOLS
from app.celery_ext.app import create_celery
from app.config import TritonSettings
from app.local.llm import worker_env
from app.local.triton import TritonServer
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

AGENTS = """\
agents:
  - name: local_calc
    system_prompt: You are a helpful assistant. Use the calculator for arithmetic.
    tools: [calculator]
    tool_choice: [required, none]
    max_tokens: 48
"""


def test_an_agent_on_the_real_model_calls_its_tool_and_answers(
    settings, store, tmp_path: Path, start_worker, llm_triton: TritonServer, llm_model_dir: Path
) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text(AGENTS)
    triton = TritonSettings(urls=[llm_triton.grpc_url])
    configured = settings.model_copy(update={"agents_file": agents_file, "triton": triton})
    celery = create_celery(configured)
    try:
        worker = start_worker(
            ["local_calc"], worker_env(llm_model_dir), settings=configured, celery=celery
        )
        unary = submit("local_calc", "What is 40+2?", celery=celery)
        answers = {unary.id: unary.get(timeout=60)}
        streamed = submit("local_calc", "What is 6*7?", stream=True, celery=celery)
        pieces = list(streamed.stream(timeout=60))
        answers[streamed.id] = streamed.get(timeout=30)
        assert "".join(pieces) == answers[streamed.id]
        # Counted with the model's tokenizer (prepared from the GGUF), not estimated.
        assert "are estimates" not in worker.log_path.read_text()
    finally:
        celery.close()

    calculator = TOOLS["calculator"].schema().parameters
    for run_id, answer in answers.items():
        run = store.load_run(run_id)
        assert (run.status, run.answer) == ("succeeded", answer)
        assert answer.strip() and "<|im_" not in answer  # text, no chat markup
        tool_step, final = run.steps
        assert (tool_step.kind, final.kind) == ("tool", "final")
        (call,) = tool_step.tool_calls
        assert call.name == "calculator"
        jsonschema.validate(call.args, calculator)
        assert call.result is not None  # its value, or the tool's error the model was shown
        assert final.tool_calls == ()
        for step in run.steps:
            print(
                "STEP",
                step.kind,
                step.latency_ms,
                step.tokens_in,
                step.tokens_out,
                repr(step.model_output),
                [(c.args, c.result) for c in step.tool_calls],
            )
            assert step.tokens_in > 0 and step.tokens_out > 0
