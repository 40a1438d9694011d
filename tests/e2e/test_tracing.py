"""OpenTelemetry: one trace from the producer's submit through each step of a run on a real worker
to its model and tool calls, the context carried in the step messages' headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.config import TracingSettings
from app.errors import RunFailedError
from app.local.processes import wait_until
from app.ops import tracing
from app.producer.submit import submit

pytestmark = pytest.mark.e2e

TWO_STEPS = 'add [tool:calculator {"expression": "1+1"}]'


@pytest.fixture
def producer_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this (the producer's) process, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(), exporter=exporter)
    yield exporter
    tracing.shutdown()


def read_spans(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def hex_id(value: int) -> str:
    return f"0x{value:032x}" if value >= 2**64 else f"0x{value:016x}"


def test_a_run_is_one_trace_from_submit_to_each_model_call(
    celery_app, start_worker, producer_spans, tmp_path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    env = {
        "AGENTQ_TRACING__EXPORTER": "console",
        "AGENTQ_TRACING__CONSOLE_FILE": str(spans_file),
        "AGENTQ_TRACING__SERVICE_NAME": "agentq-worker",
    }
    start_worker(["research"], env=env)
    run = submit("research", TWO_STEPS, celery=celery_app)
    assert run.get(timeout=60) == "Answer: 2"

    (submitted,) = producer_spans.get_finished_spans()
    assert submitted.name == "agentq.submit"
    assert submitted.attributes["agentq.run_id"] == run.id
    assert submitted.attributes["agentq.agent"] == "research"
    trace_id = hex_id(submitted.context.trace_id)

    def worker_done() -> bool:  # a step's span ends just after its result is stored
        return sum(s["name"] == "agentq.step" for s in read_spans(spans_file)) == 2

    assert wait_until(worker_done, 30), read_spans(spans_file)
    spans = read_spans(spans_file)
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"agentq-worker"}
    steps = sorted(
        (s for s in spans if s["name"] == "agentq.step"),
        key=lambda s: s["attributes"]["agentq.step"],
    )
    # submit -> step 0 -> step 1: each step's message carried its parent's context.
    assert steps[0]["parent_id"] == hex_id(submitted.context.span_id)
    assert steps[1]["parent_id"] == steps[0]["context"]["span_id"]
    for number, (step, outcome) in enumerate(zip(steps, ["next", "done"], strict=True)):
        assert step["kind"] == "SpanKind.CONSUMER"
        assert step["attributes"] == {
            "agentq.agent": "research",
            "agentq.run_id": run.id,
            "agentq.step": number,
            "agentq.outcome": outcome,
        }
    calls = [s for s in spans if s["name"] == "agentq.model_call"]
    assert sorted(c["parent_id"] for c in calls) == sorted(s["context"]["span_id"] for s in steps)
    for call in calls:
        attributes = call["attributes"]
        assert attributes["agentq.backend"] == "triton"
        assert attributes["agentq.replica"]
        assert attributes["agentq.tokens_in"] > 0 and attributes["agentq.tokens_out"] > 0
    (tool,) = [s for s in spans if s["name"] == "agentq.tool_call"]
    assert tool["parent_id"] == steps[0]["context"]["span_id"]
    assert tool["attributes"] == {"agentq.tool": "calculator"}
    assert all(s["status"]["status_code"] == "UNSET" for s in spans)


def test_a_failed_model_call_marks_its_span_and_step_as_errors(
    celery_app, start_worker, producer_spans, tmp_path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    env = {"AGENTQ_TRACING__EXPORTER": "console", "AGENTQ_TRACING__CONSOLE_FILE": str(spans_file)}
    start_worker(["research"], env=env)
    run = submit("research", "[error:model exploded]", celery=celery_app)
    with pytest.raises(RunFailedError, match="model exploded"):
        run.get(timeout=60)
    assert wait_until(lambda: len(read_spans(spans_file)) == 2, 30)
    call, step = sorted(read_spans(spans_file), key=lambda s: s["name"])
    assert call["name"] == "agentq.model_call" and call["status"]["status_code"] == "ERROR"
    assert step["attributes"]["agentq.outcome"] == "failed"
    assert step["status"]["status_code"] == "ERROR"
    assert "exploded" not in json.dumps([call, step])  # exception types only, no messages


def test_tracing_off_writes_nothing_and_adds_no_header(
    celery_app, start_worker, redis_client, tmp_path
) -> None:
    spans_file = tmp_path / "worker-spans.jsonl"
    tracing.shutdown()  # this process as a fresh producer: set up from settings (off)
    start_worker(["research"], env={"AGENTQ_TRACING__CONSOLE_FILE": str(spans_file)})
    run = submit("research", TWO_STEPS, celery=celery_app)
    assert run.get(timeout=60) == "Answer: 2"
    assert not tracing.enabled()
    assert tracing.span("agentq.submit", agent="research") is tracing.NO_SPAN
    assert tracing.inject({}) == {}
    submit("coder", "nobody consumes agent.coder here", celery=celery_app)
    message = json.loads(redis_client.lindex("agent.coder", 0))
    assert not {"traceparent", "tracestate"} & set(message["headers"])
    assert not spans_file.exists()


def test_sub_agent_runs_are_in_their_parents_trace(
    settings, start_worker, producer_spans, tmp_path
) -> None:
    from app.celery_ext.app import create_celery

    agents_file = tmp_path / "agents.yaml"
    agents_file.write_text("agents:\n  - name: boss\n    tools: [delegate]\n  - name: aide\n")
    configured = settings.model_copy(update={"agents_file": agents_file})
    spans_file = tmp_path / "worker-spans.jsonl"
    env = {"AGENTQ_TRACING__EXPORTER": "console", "AGENTQ_TRACING__CONSOLE_FILE": str(spans_file)}
    celery = create_celery(configured)
    try:
        start_worker(["boss", "aide"], env=env, settings=configured, celery=celery)
        tasks = {"tasks": [{"agent": "aide", "input": "one"}, {"agent": "aide", "input": "two"}]}
        run = submit("boss", f"[tool:delegate {json.dumps(tasks)}]", celery=celery)
        run.get(timeout=60)
    finally:
        celery.close()
    (submitted,) = producer_spans.get_finished_spans()

    def steps() -> list[dict]:
        return [s for s in read_spans(spans_file) if s["name"] == "agentq.step"]

    assert wait_until(lambda: len(steps()) == 4, 30), read_spans(spans_file)  # 2 + 2 children
    found = steps()
    assert {s["context"]["trace_id"] for s in found} == {hex_id(submitted.context.trace_id)}
    boss = {
        s["attributes"]["agentq.step"]: s
        for s in found
        if s["attributes"]["agentq.agent"] == "boss"
    }
    aides = [s for s in found if s["attributes"]["agentq.agent"] == "aide"]
    # Each child's first step hangs under the step that delegated; the parent's next step
    # under the child step that ended the fan-in.
    assert {a["parent_id"] for a in aides} == {boss[0]["context"]["span_id"]}
    assert boss[1]["parent_id"] in {a["context"]["span_id"] for a in aides}
    assert boss[0]["attributes"]["agentq.outcome"] == "parked"
