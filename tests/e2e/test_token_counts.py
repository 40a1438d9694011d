"""Tokens are the model's tokens: a real worker's counts in SQL, on /metrics and in its trace
equal the scripted model's tokenizer's count of the prompt sent and the reply received, unary
and streamed on the local Triton. On a real OpenAI-compatible server (llama-cpp-python), a
reply is counted from its ``usage`` and a stream, which it sends without one, with the model's
tokenizer; a stream's usage chunk (``include_usage``, which that server ignores) is counted
on the strict stand-in.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tokenizers import Tokenizer

from app.agents.loader import load_registry
from app.agents.prompts import conversation
from app.agents.tools import TOOLS
from app.celery_ext.app import create_celery
from app.config import OpenAISettings, ReplicaSettings, Settings
from app.config.paths import shipped_path
from app.inference.chat import ChatRequest, GenerationParams
from app.inference.tokens import tokenizer_file
from app.inference.triton import TritonBackend
from app.local.llama_server import LlamaServer
from app.local.llm import prepare_model
from app.local.processes import free_port
from app.local.workers import WorkerProcess
from app.producer.submit import submit
from tests.fixtures.llama_server import LLAMA_MODEL
from tests.fixtures.openai_server import OpenAIServer, messages_to_prompt
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scripted_tokenizer(settings: Settings) -> Tokenizer:
    path = tokenizer_file(shipped_path(settings.triton.tokenizers[settings.triton.model]))
    assert path.is_file(), f"the scripted model's tokenizer is missing: {path}"
    return Tokenizer.from_file(str(path))


def count(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def first_prompt(settings: Settings, agent: str, user: str) -> str:
    """The text a run's first step sends the model: the agent's system prompt, the user's
    input and its tools, rendered with the model's chat template."""
    spec = load_registry(settings).get(agent)
    assert spec is not None
    tools = tuple(TOOLS[name].schema() for name in spec.tools)
    request = ChatRequest(
        conversation(spec.system_prompt, user, []),
        GenerationParams(max_tokens=1),
        tools,
        spec.model,
    )
    backend = TritonBackend("127.0.0.1:1", chat_templates=settings.triton.chat_templates)
    return backend.template(request).render(request)


def test_counts_are_the_scripted_tokenizers_unary_and_streamed(
    settings, celery_app, start_worker, store, tmp_path: Path
) -> None:
    tokenizer = scripted_tokenizer(settings)
    port = free_port()
    spans_file = tmp_path / "spans.jsonl"
    env = {
        "AGENTQ_HEALTH__PORT": str(port),
        "AGENTQ_TRACING__EXPORTER": "console",
        "AGENTQ_TRACING__CONSOLE_FILE": str(spans_file),
    }
    start_worker(["research"], env=env)
    unary_input, stream_input = "[words:9] count to nine", "[words:12] count to twelve"
    unary = submit("research", unary_input, celery=celery_app)
    streamed = submit("research", stream_input, stream=True, celery=celery_app)
    assert unary.get(timeout=60).startswith("w1 w2")
    assert "".join(streamed.stream(timeout=60)).startswith("w1 w2")
    streamed.get(timeout=30)

    counts = {}
    for result, user in ((unary, unary_input), (streamed, stream_input)):
        (step,) = store.load_run(result.id).steps
        expected_in = count(tokenizer, first_prompt(settings, "research", user))
        expected_out = count(tokenizer, step.model_output)
        assert (step.tokens_in, step.tokens_out) == (expected_in, expected_out), user
        # Not the words the estimate would have given.
        assert expected_in != len(first_prompt(settings, "research", user).split())
        counts[result.id] = (expected_in, expected_out)

    total_in = sum(c[0] for c in counts.values())
    total_out = sum(c[1] for c in counts.values())
    labels = {"agent": "research", "counted": "tokenizer"}
    assert metric(port, "agentq_tokens_in_total", **labels) == total_in
    assert metric(port, "agentq_tokens_out_total", **labels) == total_out
    assert metric(port, "agentq_tokens_in_total", agent="research", counted="estimate") == 0

    def model_calls() -> list[dict]:
        if not spans_file.exists():
            return []
        spans = [json.loads(line) for line in spans_file.read_text().splitlines() if line]
        return [s["attributes"] for s in spans if s["name"] == "agentq.model_call"]

    wait_for(lambda: len(model_calls()) == 2, 30, "the two model calls' spans")
    calls = model_calls()
    assert sorted((c["agentq.tokens_in"], c["agentq.tokens_out"]) for c in calls) == sorted(
        counts.values()
    )
    assert {c["agentq.tokens_counted"] for c in calls} == {"tokenizer"}


def test_an_openai_stream_is_counted_from_its_usage(settings, tmp_path: Path, store) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text("agents:\n  - name: chat\n    backend: openai\n")
    port = free_port()
    with OpenAIServer("scripted") as server:
        openai = OpenAISettings(replicas=[ReplicaSettings(url=server.base_url)], model="scripted")
        configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
        celery = create_celery(configured)
        worker = WorkerProcess(
            configured, ["chat"], log_dir=tmp_path, extra_env={"AGENTQ_HEALTH__PORT": str(port)}
        )
        try:
            worker.start(celery)
            result = submit("chat", "[words:6] stream it", stream=True, celery=celery)
            assert "".join(result.stream(timeout=60)) == "w1 w2 w3 w4 w5 w6"
            result.get(timeout=30)
            body = server.last_body
            assert body["stream_options"] == {"include_usage": True}
            # The strict server counts words of its own prompt rendering: what it reports.
            prompt_tokens = len(messages_to_prompt(body["messages"]).split())
            (step,) = store.load_run(result.id).steps
            assert (step.tokens_in, step.tokens_out) == (prompt_tokens, 6)
            labels = {"agent": "chat", "counted": "server"}
            assert metric(port, "agentq_tokens_in_total", **labels) == prompt_tokens
            assert metric(port, "agentq_tokens_out_total", **labels) == 6
        finally:
            worker.stop()
            celery.close()


def test_a_real_servers_reply_is_counted_from_its_usage_a_stream_with_the_tokenizer(
    settings, tmp_path: Path, store, llama_openai: LlamaServer
) -> None:
    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text("agents:\n  - name: chat\n    backend: openai\n    max_tokens: 16\n")
    tokenizer_folder = prepare_model(tmp_path / "smollm2-tokenizer")
    tokenizer = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
    port = free_port()
    openai = OpenAISettings(
        replicas=[ReplicaSettings(url=llama_openai.base_url)], model=LLAMA_MODEL
    )
    configured = settings.model_copy(update={"agents_file": agents_file, "openai": openai})
    celery = create_celery(configured)
    env = {
        "AGENTQ_HEALTH__PORT": str(port),
        "AGENTQ_OPENAI__TOKENIZERS": json.dumps({LLAMA_MODEL: str(tokenizer_folder)}),
    }
    worker = WorkerProcess(configured, ["chat"], log_dir=tmp_path, extra_env=env)
    try:
        worker.start(celery)
        unary = submit("chat", "Say hello.", celery=celery)
        unary.get(timeout=60)
        streamed = submit("chat", "Say hello.", stream=True, celery=celery)
        assert "".join(streamed.stream(timeout=60)) == streamed.get(timeout=30)
        (by_server,) = store.load_run(unary.id).steps
        (by_tokenizer,) = store.load_run(streamed.id).steps
        assert 0 < by_server.tokens_out <= 16
        assert by_tokenizer.tokens_out == count(tokenizer, by_tokenizer.model_output)
        for step, counted in ((by_server, "server"), (by_tokenizer, "tokenizer")):
            labels = {"agent": "chat", "counted": counted}
            assert metric(port, "agentq_tokens_in_total", **labels) == step.tokens_in > 0
            assert metric(port, "agentq_tokens_out_total", **labels) == step.tokens_out
        assert metric(port, "agentq_tokens_in_total", agent="chat", counted="estimate") == 0
    finally:
        worker.stop()
        celery.close()
