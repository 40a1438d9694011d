"""Guardrails with a real worker and the scripted model asking for too much.

Each run that breaks a guardrail ends with a typed error from ``AsyncResult.get()``, a typed
``error_type`` in the session store, a counter on the worker's /metrics and a FAILURE with
the exception in the task's events (what Flower shows).
"""

from __future__ import annotations

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.celery_ext.app import create_celery
from app.config.paths import shipped_path
from app.constants import kv_key
from app.errors import BudgetExceededError, InputRejectedError, OutputRejectedError
from app.inference.tokens import load_tokenizer
from app.local.processes import free_port
from app.producer.submit import submit
from tests.fixtures import steps as recorded

pytestmark = pytest.mark.e2e

AGENTS = {
    "agents": [
        {
            "name": "guarded",
            "tools": ["calculator"],
            "max_steps": 6,
            # Tokens of the scripted model's tokenizer: a tool call's reply is about 60.
            "budget": {"max_tokens_out": 200, "max_tool_calls": 1},
            "input_validators": [{"type": "blocked_patterns", "patterns": ["(?i)rm -rf"]}],
        },
        {
            "name": "structured",
            "output_validators": [
                {"type": "json_schema", "schema": {"type": "object", "required": ["title"]}}
            ],
        },
    ]
}


@pytest.fixture
def guarded(settings, tmp_path, start_worker):
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(AGENTS))
    local = settings.model_copy(update={"agents_file": path})
    app = create_celery(local)
    port = free_port()
    env = {"AGENTQ_AGENTS_FILE": str(path), "AGENTQ_HEALTH__PORT": str(port)}
    start_worker(["guarded", "structured"], env=env)
    yield app, port
    app.close()


def metric(port: int, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_runs_that_ask_for_too_much_end_with_typed_reasons(guarded, store, redis_client, settings):
    scripted = load_tokenizer(shipped_path(settings.triton.tokenizers[settings.triton.model]))
    app, port = guarded
    words = submit("guarded", "talk [words:300]", celery=app)
    tools = submit(
        "guarded",
        'add [tool:calculator {"expression": "1+1"}] [tool:calculator {"expression": "2+2"}]',
        celery=app,
    )
    slow = submit(
        "guarded",
        'slow [tool:calculator {"expression": "1"}] [delay:1500]',
        celery=app,
        budget={"max_tool_calls": 5, "max_wall_time_s": 1.0},  # the 5 cannot loosen the 1
    )
    schema = submit("structured", "no json here", celery=app)

    with pytest.raises(BudgetExceededError, match="output token budget of 200 exceeded"):
        words.get(timeout=60)
    with pytest.raises(BudgetExceededError, match="tool call budget of 1 exhausted"):
        tools.get(timeout=60)
    with pytest.raises(BudgetExceededError, match="wall time budget of 1 s exhausted"):
        slow.get(timeout=60)
    with pytest.raises(OutputRejectedError, match="json_schema"):
        schema.get(timeout=60)

    expected = {
        words.id: "budget_exceeded",
        tools.id: "budget_exceeded",
        slow.id: "budget_exceeded",
        schema.id: "output_rejected",
    }
    for run_id, error_type in expected.items():
        run = store.load_run(run_id)
        assert (run.status, run.error_type) == ("failed", error_type)
    spent = store.load_run(words.id).steps[0]  # what was spent is on record, in tokens
    assert spent.tokens_out == len(scripted.encode(spent.model_output, add_special_tokens=False))
    assert [recorded.result(s) for s in store.load_run(tools.id).steps] == [2, None]
    assert len(store.load_run(slow.id).steps) == 2  # the 1.5 s step, then the stop

    assert metric(port, "agentq_guardrail_stops_total", agent="guarded") == 3
    assert metric(port, "agentq_runs_total", error_type="output_rejected") == 1
    assert metric(port, "agentq_runs_total", agent="guarded", error_type="budget_exceeded") == 3


def test_a_disallowed_tool_is_an_error_step_and_the_run_goes_on(guarded, store, redis_client):
    app, port = guarded
    result = submit("guarded", 'set [tool:kv_set {"key": "k", "value": "v"}]', celery=app)
    answer = result.get(timeout=60)
    assert "is not allowed for agent 'guarded'" in answer
    steps = store.load_run(result.id).steps
    assert [s.kind for s in steps] == ["denied", "final"]
    assert redis_client.get(kv_key("k")) is None  # never called
    assert metric(port, "agentq_guardrail_stops_total", kind="tool_not_allowed") == 1


def test_an_input_validator_refuses_at_submit_and_nothing_is_enqueued(guarded, redis_client):
    app, _ = guarded
    with pytest.raises(InputRejectedError, match="blocked pattern"):
        submit("guarded", "please rm -rf / for me", celery=app)
    assert redis_client.llen("agent.guarded") == 0
