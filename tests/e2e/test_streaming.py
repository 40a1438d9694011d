"""Token streaming to the producer through Redis Streams, from Triton's decoupled model."""

from __future__ import annotations

import asyncio

import pytest

from app.constants import DEFAULT_TENANT, stream_key
from app.producer.submit import submit
from app.tasks.relay import ATTEMPT, END, STEP, TOKEN
from tests.fixtures.cli import agentq

pytestmark = pytest.mark.e2e

WORDS = ["w1"] + [f" w{i}" for i in range(2, 41)]


def test_stream_yields_every_token_in_order_then_the_answer(celery_app, start_worker) -> None:
    start_worker(["research"])
    result = submit("research", "[words:40] count to forty", stream=True, celery=celery_app)
    tokens = list(result.stream(timeout=60))
    assert tokens == WORDS
    assert result.get(timeout=30) == "".join(WORDS)


def test_a_multi_step_run_streams_each_step_and_ends(celery_app, start_worker) -> None:
    start_worker(["research"])
    user = 'add [tool:calculator {"expression": "20+22"}]'
    result = submit("research", user, stream=True, celery=celery_app)
    events = list(result.events(timeout=60))
    assert [(e.kind, e.step) for e in events if e.kind != TOKEN] == [
        (ATTEMPT, 0),
        (STEP, 0),
        (ATTEMPT, 1),
        (STEP, 1),
        (END, -1),
    ]
    step0 = "".join(e.text for e in events if e.kind == TOKEN and e.step == 0)
    # The call in the scripted model's chat template format, one token per streamed piece.
    call = '{"name": "calculator", "arguments": {"expression": "20+22"}}'
    assert step0 == f"<tool_call> {call} </tool_call>"
    assert [e.text for e in events if e.kind == TOKEN and e.step == 1] == ["Answer:", " 42"]
    assert events[1 + step0.count(" ") + 1].data == {
        "kind": "tool",
        "tool": "calculator",
        "tools": ["calculator"],
    }
    assert events[-1].data == {"status": "succeeded", "answer": "Answer: 42"}


def test_async_stream(celery_app, start_worker) -> None:
    start_worker(["research"])
    result = submit("research", "[words:40] again", stream=True, celery=celery_app)

    async def collect() -> list[str]:
        return [token async for token in result.astream(timeout=60)]

    assert asyncio.run(collect()) == WORDS


def test_a_failed_run_ends_its_stream_with_the_error(celery_app, start_worker) -> None:
    start_worker(["research"])
    result = submit("research", "[error:overloaded model]", stream=True, celery=celery_app)
    end = list(result.events(timeout=60))[-1]
    assert end.kind == END and end.data["status"] == "failed"
    assert "overloaded model" in end.data["error"]


def test_without_a_reader_the_run_finishes_and_its_stream_expires(
    celery_app, start_worker, redis_client
) -> None:
    start_worker(["research"], env={"AGENTQ_STREAM__TTL_S": "120"})
    result = submit("research", "[words:300] nobody listens", stream=True, celery=celery_app)
    assert result.get(timeout=60).startswith("w1 w2")
    key = stream_key(DEFAULT_TENANT, result.id)
    assert 0 < redis_client.ttl(key) <= 120
    assert redis_client.xlen(key) >= 300  # every token was written, none waited on a reader


def test_non_streamed_runs_write_no_stream(celery_app, start_worker, redis_client) -> None:
    start_worker(["research"])
    result = submit("research", "[words:5] plain", celery=celery_app)
    assert result.get(timeout=60) == "w1 w2 w3 w4 w5"
    assert not redis_client.exists(stream_key(DEFAULT_TENANT, result.id))


def test_cli_submit_stream_prints_tokens_as_they_come(settings, start_worker) -> None:
    start_worker(["research"])
    out = agentq(settings, "submit", "research", "--stream", "[words:12] via the cli")
    assert out.returncode == 0, out.stderr
    assert "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12\n[step 0: final]" in out.stdout
