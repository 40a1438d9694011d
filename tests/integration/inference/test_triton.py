"""TritonBackend against the real tritonserver serving the scripted ensemble models."""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from app.config import Settings
from app.errors import InferenceError, InferenceUnavailableError, ModelNotFoundError
from app.inference.backend import ChatRequest, GenerationParams, ToolCall, ToolSchema
from app.inference.triton import TritonBackend
from app.local.processes import free_port, wait_until
from app.local.triton import TritonServer, install_triton
from tests.fixtures.chats import scripted_request
from tests.fixtures.prompts import scripted_prompt
from tests.fixtures.triton import ALT_MODEL, ALT_STREAM_MODEL, served_counts

pytestmark = pytest.mark.integration

PARAMS = GenerationParams(max_tokens=512)


_prompt = scripted_prompt
_ask = scripted_request


@pytest.fixture
def backend(triton_server: TritonServer) -> Iterator[TritonBackend]:
    client = TritonBackend(triton_server.grpc_url, timeout_s=30)
    yield client
    client.close()


def _text(deltas) -> str:
    return "".join(d.text for d in deltas)


def test_generate_answers_plain_input(backend: TritonBackend) -> None:
    completion = backend.generate(_ask("hello   world"))
    assert completion.text == "Answer: HELLO WORLD"
    assert completion.tool_calls == ()
    assert completion.tokens_out == 3
    assert completion.tokens_in > 0
    assert completion.replica == backend.url


def test_generate_asks_for_a_tool_then_answers_with_its_result(backend: TritonBackend) -> None:
    user = 'add them [tool:calculator {"expression":"2+3"}]'
    call = backend.generate(_ask(user))
    assert json.loads(call.text) == {"tool": "calculator", "args": {"expression": "2+3"}}
    assert call.tool_calls == (ToolCall("call_0", "calculator", {"expression": "2+3"}),)
    final = backend.generate(_ask(user, "5"))
    assert final.text == "Answer: 5" and final.tool_calls == ()


def test_the_tools_section_reaches_the_model_and_costs_tokens(backend: TritonBackend) -> None:
    # The scripted model ignores what precedes the user's turn: same reply, longer prompt.
    plain = _ask("[tool:kv_get]")
    schema = {"type": "object", "properties": {"key": {"type": "string"}}}
    told = ChatRequest(plain.messages, PARAMS, (ToolSchema("kv_get", "Read a key.", schema),))
    with_tools, without = backend.generate(told), backend.generate(plain)
    assert with_tools.tool_calls == without.tool_calls == (ToolCall("call_0", "kv_get", {}),)
    assert with_tools.tokens_in > without.tokens_in


def test_stream_ends_with_the_tool_calls_of_the_whole_reply(backend: TritonBackend) -> None:
    deltas = list(backend.stream(_ask('[tool:calculator {"expression": "1+1"}]')))
    assert json.loads(_text(deltas)) == {"tool": "calculator", "args": {"expression": "1+1"}}
    assert [d.tool_calls for d in deltas if d.tool_calls] == [
        (ToolCall("call_0", "calculator", {"expression": "1+1"}),)
    ]
    assert deltas[-1].text == ""
    assert not any(d.tool_calls for d in backend.stream(_ask("no tool here")))


def test_generate_sends_optional_inputs(backend: TritonBackend) -> None:
    # The server rejects any name or type that the config does not declare.
    params = GenerationParams(
        max_tokens=8, temperature=0.2, top_p=0.9, top_k=5, random_seed=7, stop_words=["a", "b"]
    )
    assert backend.generate(_ask("x y", params=params)).text == "Answer: X Y"


def test_model_error_is_an_inference_error_with_its_message(backend: TritonBackend) -> None:
    with pytest.raises(InferenceError, match="boom") as info:
        backend.generate(_ask("fail [error:boom]"))
    assert not isinstance(info.value, InferenceUnavailableError)
    assert not isinstance(info.value, ModelNotFoundError)


def test_max_tokens_cuts_the_reply(backend: TritonBackend) -> None:
    text = backend.generate(_ask("[words:40]", params=GenerationParams(max_tokens=5))).text
    assert text == "w1 w2 w3 w4 w5"


def test_stream_yields_every_piece_in_order(backend: TritonBackend) -> None:
    *deltas, counts = backend.stream(_ask("[words:50]"))
    pieces = [d.text for d in deltas]
    assert len(pieces) == 50
    # The call's counts come last: words, labelled so, for a backend given no tokenizer.
    assert (counts.tokens_out, counts.counted) == (50, "estimate")
    assert pieces[:2] == ["w1", " w2"]
    assert "".join(pieces) == " ".join(f"w{i}" for i in range(1, 51))


def test_stream_with_model_error_raises(backend: TritonBackend) -> None:
    with pytest.raises(InferenceError, match="x"):
        list(backend.stream(_ask("[error:x]")))


def test_stream_stopped_early_leaves_backend_usable(backend: TritonBackend) -> None:
    stream = backend.stream(_ask("[words:30]"))
    assert next(stream).text == "w1"
    stream.close()
    assert _text(backend.stream(_ask("[words:3]"))) == "w1 w2 w3"


def test_sixteen_threads_get_their_own_replies(backend: TritonBackend) -> None:
    def call(i: int) -> tuple[int, str]:
        return i, backend.generate(_ask(f"request number {i}")).text

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(call, range(160)))
    assert all(text == f"Answer: REQUEST NUMBER {i}" for i, text in results)


def test_health_is_true_on_a_ready_server(backend: TritonBackend) -> None:
    assert backend.health() is True
    assert backend.missing_models(["ensemble", "ensemble_stream"]) == []


def test_a_model_triton_does_not_have_is_named_and_not_retryable(backend: TritonBackend) -> None:
    request = _ask("hi", model="llama")
    expected = rf"Triton at {backend.url} has no model 'llama'"
    with pytest.raises(ModelNotFoundError, match=expected):
        backend.generate(request)
    with pytest.raises(ModelNotFoundError, match=expected):
        list(backend.stream(request))  # a model not in stream_models streams from itself
    assert backend.missing_models(["llama", "ensemble", "qwen"]) == ["llama", "qwen"]
    assert backend.generate(_ask("still")).text == "Answer: STILL"  # the client is unharmed


def test_closed_port_is_unavailable_fast() -> None:
    dead = TritonBackend(f"127.0.0.1:{free_port()}", timeout_s=2)
    try:
        started = time.monotonic()
        with pytest.raises(InferenceUnavailableError):
            dead.generate(_ask("hi"))
        with pytest.raises(InferenceUnavailableError):
            list(dead.stream(_ask("hi")))
        assert dead.health() is False
        assert dead.missing_models(["ensemble"]) == ["ensemble"]
        assert time.monotonic() - started < 10
    finally:
        dead.close()


def test_stop_leaves_no_process() -> None:
    settings = Settings().triton
    server = TritonServer(install_triton(settings.home), settings.model_repository)
    with server:
        pid = server.pid
        stubs = server.stub_pids
        assert len(stubs) == 4, "two instances of each scripted model, one stub each"
        probe = TritonBackend(server.grpc_url, timeout_s=5)
        assert probe.health()
        probe.close()  # an open client would hold up the server's shutdown
    assert server.stop() is not None  # idempotent
    for gone in [pid, *stubs]:
        assert not os.path.exists(f"/proc/{gone}"), f"process {gone} still there"


def _batch(
    prompts: list[str], max_tokens: int, stream: bool | None = None
) -> list[grpcclient.InferInput]:
    """Inputs of one request holding a batch of ``len(prompts)`` rows ([B, 1] tensors)."""

    def tensor(name: str, rows: list, datatype: str, dtype: Any) -> grpcclient.InferInput:
        data = np.array([[v] for v in rows], dtype=dtype)
        t = grpcclient.InferInput(name, list(data.shape), datatype)
        t.set_data_from_numpy(data)
        return t

    inputs = [
        tensor("text_input", [p.encode() for p in prompts], "BYTES", np.object_),
        tensor("max_tokens", [max_tokens] * len(prompts), "INT32", np.int32),
    ]
    if stream is not None:
        inputs.append(tensor("stream", [stream] * len(prompts), "BOOL", np.bool_))
    return inputs


def test_batched_requests_get_one_row_each(triton_server: TritonServer) -> None:
    prompts = [_prompt("one"), _prompt("[words:3]"), _prompt("two words")]
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        out = client.infer("ensemble", _batch(prompts, 10)).as_numpy("text_output")
        assert out.shape == (3, 1)
        assert [r[0].decode() for r in out] == ["Answer: ONE", "w1 w2 w3", "Answer: TWO WORDS"]

        replies: queue.Queue = queue.Queue()
        for stream in (True, False):
            client.start_stream(callback=lambda result, error: replies.put((result, error)))
            client.async_stream_infer(
                "ensemble_stream", _batch(prompts, 10, stream), enable_empty_final_response=True
            )
            rows = ["", "", ""]
            while True:
                result, error = replies.get(timeout=10)
                assert error is None
                chunk = result.as_numpy("text_output")
                if chunk is not None:
                    rows = [acc + r[0].decode() for acc, r in zip(rows, chunk, strict=True)]
                if result.get_response().parameters["triton_final_response"].bool_param:
                    break
            client.stop_stream()
            assert rows == ["Answer: ONE", "w1 w2 w3", "Answer: TWO WORDS"]
    finally:
        client.close()


def test_errors_triton_reports_inside_a_200_response_are_recognised(
    triton_server: TritonServer,
) -> None:
    # Triton's generate endpoint answers a decoupled model with HTTP 200 and an error body.
    import httpx

    from app.inference.openai_compat import error_in_body

    body = {"text_input": "System: s\nUser: hi\nAssistant:", "max_tokens": 8}
    bad = httpx.post(f"{triton_server.http_url}/v2/models/ensemble_stream/generate", json=body)
    assert bad.status_code == 200
    assert "exactly 1 response" in (error_in_body(bad.json()) or "")
    good = httpx.post(f"{triton_server.http_url}/v2/models/ensemble/generate", json=body)
    assert good.status_code == 200 and error_in_body(good.json()) is None
    assert good.json()["text_output"] == "Answer: HI"


def test_pace_spaces_the_streamed_tokens_as_decode_steps(backend: TritonBackend) -> None:
    arrivals = [time.monotonic() for d in backend.stream(_ask("[words:5] [pace:100]")) if d.text]
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] >= 0.35  # four pauses of 100 ms (a lower bound)


def test_two_agents_with_two_models_on_one_triton_are_each_served_by_their_own(
    triton_two_models: TritonServer,
) -> None:
    models = ["ensemble", "ensemble_stream", ALT_MODEL, ALT_STREAM_MODEL]
    backend = TritonBackend(
        triton_two_models.grpc_url, timeout_s=30, stream_models={ALT_MODEL: ALT_STREAM_MODEL}
    )
    try:
        assert backend.missing_models(models) == []
        before = served_counts(triton_two_models, models)
        # The first agent names no model (the backend's default), the second its own.
        first = [backend.generate(_ask(f"first agent {i}")) for i in range(2)]
        second = [backend.generate(_ask(f"second agent {i}", model=ALT_MODEL)) for i in range(3)]
        streamed = _text(backend.stream(_ask("second streams", model=ALT_MODEL)))
    finally:
        backend.close()
    assert [c.text for c in first] == ["Answer: FIRST AGENT 0", "Answer: FIRST AGENT 1"]
    assert [c.text for c in second][-1] == "Answer: SECOND AGENT 2"
    assert streamed == "Answer: SECOND STREAMS"
    expected = {"ensemble": 2, "ensemble_stream": 0, ALT_MODEL: 3, ALT_STREAM_MODEL: 1}
    served: dict[str, int] = {}

    def counted() -> bool:
        # A decoupled request is counted once its instance is done with it, after the client
        # has its final response.
        after = served_counts(triton_two_models, models)
        served.update({m: after[m] - before[m] for m in models})
        return served == expected

    wait_until(counted, 10)
    assert served == expected


def test_the_default_repository_lacks_the_second_model(backend: TritonBackend) -> None:
    assert backend.missing_models([ALT_MODEL, "ensemble"]) == [ALT_MODEL]
    with pytest.raises(ModelNotFoundError, match=ALT_MODEL):
        backend.generate(_ask("hi", model=ALT_MODEL))
