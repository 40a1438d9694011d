"""OpenAICompatBackend against a real local HTTP server that checks the OpenAI protocol strictly.

The server (tests/fixtures/openai_server.py) refuses what a strict server refuses (tools it
was not told of, tool results as user text, a tool message answering no call) and answers as
the scripted model, or as a test's script. It is kept for what a real server cannot be made
to do on demand (several calls in one reply, malformed arguments, error statuses and bodies,
cut streams, usage chunks, a missing model's 404, several models, slow or concurrent calls);
test_openai_llama.py runs the protocol against a real one (llama-cpp-python).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelNotFoundError,
    ModelRefusedError,
)
from app.inference.chat import (
    ChatRequest,
    Completion,
    Delta,
    GenerationParams,
    Message,
    ToolCall,
    ToolSchema,
)
from app.inference.openai_compat import OpenAICompatBackend
from tests.fixtures.openai_protocol import ChatCall, ScriptedCall, ScriptedReply
from tests.fixtures.openai_server import OpenAIServer, messages_to_prompt
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

PARAMS = GenerationParams(max_tokens=512)
CALCULATOR = ToolSchema(
    "calculator",
    "Evaluate an arithmetic expression.",
    {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
)
WEATHER = ToolSchema(
    "weather",
    "Today's weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(user: str, *tools: ToolSchema, model: str | None = None) -> ChatRequest:
    """A system and a user turn."""
    turns = (Message("system", "you are scripted"), Message("user", user))
    return ChatRequest(turns, PARAMS, tools, model)


def answered(request: ChatRequest, reply: Completion, results: dict[str, str]) -> ChatRequest:
    """``request`` continued by ``reply``'s tool calls and their results, in call order."""
    turns = (
        Message("assistant", reply.text, tool_calls=reply.tool_calls),
        *(
            Message("tool", results[call.id], tool_call_id=call.id, name=call.name)
            for call in reply.tool_calls
        ),
    )
    return ChatRequest((*request.messages, *turns), request.params, request.tools, request.model)


def streamed(deltas: Iterator[Delta]) -> tuple[str, tuple[ToolCall, ...], int]:
    """The text, the tool calls and how many deltas carried tool calls."""
    pieces = list(deltas)
    calls = [d.tool_calls for d in pieces if d.tool_calls]
    return "".join(d.text for d in pieces), (calls[0] if calls else ()), len(calls)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def backend(server: OpenAIServer) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
    yield client
    client.close()


# ---- the protocol ----


def test_generate_answers_with_the_servers_usage(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    completion = backend.generate(ask("hello   world"))
    assert completion.text == "Answer: HELLO WORLD"
    assert completion.tool_calls == ()
    body = server.last_body
    prompt_words = len(messages_to_prompt(body["messages"]).split())
    assert (completion.tokens_in, completion.tokens_out) == (prompt_words, 3)
    assert completion.replica == server.base_url
    assert body["model"] == "scripted"
    assert body["stream"] is False
    assert "tools" not in body
    assert body["messages"][-1] == {"role": "user", "content": "hello   world"}


def test_generate_sends_the_sampling_params(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    params = GenerationParams(
        max_tokens=16, temperature=0.2, top_p=0.9, top_k=5, random_seed=3, stop_words=["END"]
    )
    backend.generate(ChatRequest.of_prompt("hi", params))
    body = server.last_body
    sent = {k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")}
    assert sent == {
        "max_tokens": 16,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 3,
        "stop": ["END"],
    }


def test_stream_yields_pieces_in_order_that_make_the_generated_text(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    *pieces, counts = backend.stream(ask("[words:6]"))
    assert pieces == [Delta(text=t) for t in ("w1", " w2", " w3", " w4", " w5", " w6")]
    assert (counts.tokens_out, counts.counted) == (6, "server")
    assert server.last_body["stream"] is True
    assert "".join(p.text for p in pieces) == backend.generate(ask("[words:6]")).text


def test_tool_round_trip_passes_the_strict_checks(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    request = ask('add them [tool:calculator {"expression":"2+3"}]', CALCULATOR, WEATHER)
    reply = backend.generate(request)
    assert reply.text == ""
    assert reply.tool_calls == (ToolCall("call_0", "calculator", {"expression": "2+3"}),)
    assert [t["function"]["name"] for t in server.last_body["tools"]] == ["calculator", "weather"]
    assert streamed(backend.stream(request)) == ("", reply.tool_calls, 1)

    followed = answered(request, reply, {"call_0": "5"})
    assert backend.generate(followed).text == "Answer: 5"
    assert server.last_body["messages"][-2:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "5"},
    ]
    assert streamed(backend.stream(followed)) == ("Answer: 5", (), 0)
    assert server.refused == []


def _two_cities(call: ChatCall) -> ScriptedReply:
    results = call.tool_results()
    if not results:
        return ScriptedReply(
            text="Looking up both.",
            tool_calls=[
                ScriptedCall("weather", {"city": "Oslo"}, id="call_oslo"),
                ScriptedCall("weather", {"city": "Bergen"}, id="call_bergen"),
            ],
        )
    return ScriptedReply(text=f"Oslo: {results['call_oslo']}; Bergen: {results['call_bergen']}")


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_two_tool_calls_in_one_reply_and_both_results_back(
    backend: OpenAICompatBackend, server: OpenAIServer, streaming: bool
) -> None:
    server.script = _two_cities
    request = ask("Weather in Oslo and Bergen?", WEATHER)
    if streaming:
        text, calls, deltas = streamed(backend.stream(request))
        assert deltas == 1  # the calls come whole, in one delta
        reply = Completion(text, 0, 0, 0.0, server.base_url, calls)
    else:
        reply = backend.generate(request)
    assert reply.text == "Looking up both."
    assert reply.tool_calls == (
        ToolCall("call_oslo", "weather", {"city": "Oslo"}),
        ToolCall("call_bergen", "weather", {"city": "Bergen"}),
    )
    results = {"call_oslo": '{"sky":"rain"}', "call_bergen": '{"sky":"sun"}'}
    answer = backend.generate(answered(request, reply, results))
    assert answer.text == 'Oslo: {"sky":"rain"}; Bergen: {"sky":"sun"}'
    tool_messages = [m for m in server.last_body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_oslo", "call_bergen"]
    assert server.refused == []


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
def test_malformed_arguments_from_the_model_come_back_as_a_call_with_an_error(
    backend: OpenAICompatBackend, server: OpenAIServer, streaming: bool
) -> None:
    def script(call: ChatCall) -> ScriptedReply:
        return ScriptedReply(tool_calls=[ScriptedCall("weather", arguments='{"city": Oslo}')])

    server.script = script
    request = ask("Weather?", WEATHER)
    if streaming:
        _, calls, _ = streamed(backend.stream(request))
    else:
        calls = backend.generate(request).tool_calls
    (call,) = calls
    assert (call.id, call.name, call.args) == ("call_0", "weather", {})
    assert call.error is not None and "not valid JSON" in call.error


# ---- what the strict server refuses ----


def _body(*messages: dict[str, Any], tools: Sequence[str] = ("weather",), **extra: Any) -> Any:
    described = [{"type": "function", "function": {"name": n, "parameters": {}}} for n in tools]
    return {"model": "scripted", "messages": list(messages), "tools": described, **extra}


USER = {"role": "user", "content": "Weather in Oslo?"}
CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ],
}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "rain"}


def test_a_valid_tool_conversation_is_served(server: OpenAIServer) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions", json=_body(USER, CALL, RESULT))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Answer: rain"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_body(USER, CALL, RESULT, tools=["calculator"]), "do not describe"),
        (_body(USER, CALL, RESULT) | {"tools": None}, "do not describe"),
        (_body(USER, {"role": "user", "content": "Tool result: rain"}), "tool result sent as user"),
        (_body(USER, CALL, RESULT | {"tool_call_id": "call_9"}), "answers no tool call"),
        (_body(USER, CALL, {"role": "tool", "content": "rain"}), "answers no tool call"),
        (_body(USER, RESULT), "answers no tool call"),
        (_body(USER, CALL, RESULT, RESULT), "answered twice"),
        (_body(USER, CALL, USER), "did not have response messages: call_1"),
        (_body(USER, CALL), "did not have response messages: call_1"),
        (_body(USER, CALL | {"tool_calls": []}, USER), "non-empty array"),
        (_body(USER, CALL, RESULT | {"name": "weather"}), "unrecognized field"),
        (_body({"content": "no role"}), "role must be one of"),
        (_body({"role": "user", "content": 42}), "content must be a string"),
        (_body({"role": "assistant", "content": None}), "content must be a string"),
        (_body(USER) | {"tools": [{"type": "code", "function": {"name": "x"}}]}, "'function'"),
        (_body(USER) | {"tools": []}, "non-empty array"),
        (_body(USER) | {"messages": []}, "'messages' must be a non-empty array"),
        (_body(USER, max_tokens=0), "max_tokens"),
        (_body(USER, frequency=1), "Unrecognized request argument"),
    ],
)
def test_the_strict_server_refuses_protocol_mistakes_with_400(
    server: OpenAIServer, body: Any, reason: str
) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert reason in error["message"]
    assert error["type"] == "invalid_request_error"
    (refused,) = server.refused
    assert refused.status == 400 and refused.error == error["message"]


def test_the_backend_gets_the_strict_refusal_as_a_model_refusal(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    # The conversation calls a tool this request does not describe.
    request = ask("Weather?", CALCULATOR)
    call = ToolCall("call_1", "weather", {"city": "Oslo"})
    turns = (
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "rain", tool_call_id="call_1"),
    )
    bad = ChatRequest((*request.messages, *turns), PARAMS, request.tools)
    with pytest.raises(ModelRefusedError, match=r"HTTP 400.*'weather'.*do not describe"):
        backend.generate(bad)
    with pytest.raises(ModelRefusedError, match="HTTP 400"):
        list(backend.stream(bad))
    assert len(server.refused) == 2


# ---- models ----


def test_each_request_is_served_by_the_model_it_names() -> None:
    seen: list[str] = []

    def script(call: ChatCall) -> ScriptedReply:
        seen.append(call.model)
        return ScriptedReply(text=f"from {call.model}")

    with OpenAIServer(["llama-8b", "qwen-7b"], script=script) as server:
        backend = OpenAICompatBackend(server.base_url, "llama-8b")
        try:
            assert backend.generate(ask("hi")).text == "from llama-8b"
            assert backend.generate(ask("hi", model="qwen-7b")).text == "from qwen-7b"
            assert backend.missing_models(["qwen-7b", "mistral", "llama-8b"]) == ["mistral"]
        finally:
            backend.close()
    assert seen == ["llama-8b", "qwen-7b"]


def test_a_model_the_server_does_not_have_fails_clearly_and_is_not_retried(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    request = ask("hi", model="no-such-model")
    with pytest.raises(ModelNotFoundError) as raised:
        backend.generate(request)
    assert "no model 'no-such-model'" in str(raised.value)
    assert server.base_url in str(raised.value)
    assert isinstance(raised.value, ModelRefusedError)
    with pytest.raises(ModelNotFoundError):
        list(backend.stream(request))
    assert [r.status for r in server.requests] == [404, 404]
    assert backend.missing_models(["no-such-model", "scripted"]) == ["no-such-model"]


# ---- failures ----


def test_model_error_is_not_retryable(backend: OpenAICompatBackend) -> None:
    with pytest.raises(InferenceError, match="boom") as raised:
        backend.generate(ask("[error:boom]"))
    assert not isinstance(raised.value, InferenceUnavailableError)
    with pytest.raises(InferenceError, match="boom") as raised:
        list(backend.stream(ask("[error:boom]")))
    assert not isinstance(raised.value, InferenceUnavailableError)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overloaded_or_gateway_statuses_are_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer, status: int
) -> None:
    server.mode = f"http_{status}"
    with pytest.raises(InferenceUnavailableError, match=f"HTTP {status}"):
        backend.generate(ask("hi"))
    with pytest.raises(InferenceUnavailableError, match=f"HTTP {status}"):
        list(backend.stream(ask("hi")))


@pytest.mark.parametrize("status", [400, 404, 500])
def test_other_statuses_carry_the_servers_message(
    backend: OpenAICompatBackend, server: OpenAIServer, status: int
) -> None:
    server.mode = f"http_{status}"
    with pytest.raises(InferenceError, match=f"HTTP {status}.*scripted HTTP {status}") as raised:
        backend.generate(ask("hi"))
    assert not isinstance(raised.value, InferenceUnavailableError | ModelNotFoundError)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("error_in_200", "model crashed"), ("no_choices", "without choices")],
)
def test_errors_inside_http_200_are_recognised(
    backend: OpenAICompatBackend, server: OpenAIServer, mode: str, reason: str
) -> None:
    server.mode = mode
    with pytest.raises(InferenceError, match=reason) as raised:
        backend.generate(ask("hi"))
    assert not isinstance(raised.value, InferenceUnavailableError)
    with pytest.raises(InferenceError) as raised:
        list(backend.stream(ask("hi")))
    assert not isinstance(raised.value, InferenceUnavailableError)


def test_error_event_mid_stream_is_not_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    server.mode = "sse_error"
    received: list[Delta] = []
    with pytest.raises(InferenceError, match="failed mid-stream") as raised:
        for piece in backend.stream(ask("[words:5]")):
            received.append(piece)
    assert not isinstance(raised.value, InferenceUnavailableError)
    assert received == [Delta(text="w1")]


@pytest.mark.parametrize("mode", ["cut", "truncated"])
def test_stream_ended_early_is_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer, mode: str
) -> None:
    server.mode = mode
    with pytest.raises(InferenceUnavailableError):
        list(backend.stream(ask("[words:5]")))


def test_stream_ended_between_tool_call_fragments_is_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    server.script = _two_cities
    server.mode = "truncated"
    with pytest.raises(InferenceUnavailableError, match="ended before the reply"):
        list(backend.stream(ask("Weather?", WEATHER)))


def test_reply_cut_mid_body_is_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    server.mode = "cut"
    with pytest.raises(InferenceUnavailableError):
        backend.generate(ask("hi"))
    server.mode = "ok"
    assert backend.generate(ask("hi")).text == "Answer: HI"


def test_closed_port_is_unavailable_and_unhealthy() -> None:
    with OpenAIServer() as stopped:
        url = stopped.base_url
    backend = OpenAICompatBackend(url, "scripted", timeout_s=5)
    try:
        with pytest.raises(InferenceUnavailableError, match="connection failed"):
            backend.generate(ask("hi"))
        with pytest.raises(InferenceUnavailableError):
            list(backend.stream(ask("hi")))
        assert backend.health() is False
        assert backend.missing_models(["scripted"]) == ["scripted"]
    finally:
        backend.close()


def test_call_timeout_overrides_the_default(backend: OpenAICompatBackend) -> None:
    started = time.monotonic()
    with pytest.raises(InferenceUnavailableError, match="no reply in time"):
        backend.generate(ask("[delay:3000] hi"), timeout_s=0.3)
    with pytest.raises(InferenceUnavailableError):
        list(backend.stream(ask("[delay:3000] hi"), timeout_s=0.3))
    assert time.monotonic() - started < 2.5


def test_api_key_is_sent_as_bearer_and_kept_out_of_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(require_key="sk-right-key") as server:
        good = OpenAICompatBackend(server.base_url, "scripted", api_key="sk-right-key")
        bad = OpenAICompatBackend(server.base_url, "scripted", api_key="sk-wrong-secret")
        try:
            assert good.generate(ask("hi")).text == "Answer: HI"
            assert server.last_headers["authorization"] == "Bearer sk-right-key"
            assert good.health() is True
            # The server echoes the refused key in its 401 message, as OpenAI does.
            with pytest.raises(InferenceError, match="HTTP 401") as raised:
                bad.generate(ask("hi"))
            assert not isinstance(raised.value, InferenceUnavailableError)
            assert server.last_headers["authorization"] == "Bearer sk-wrong-secret"
            with pytest.raises(InferenceError, match="HTTP 401") as streamed_error:
                list(bad.stream(ask("hi")))
            assert bad.health() is False
            assert bad.missing_models(["scripted"]) == ["scripted"]
        finally:
            good.close()
            bad.close()
    for text in (str(raised.value), str(streamed_error.value), repr(bad), caplog.text):
        assert "sk-wrong-secret" not in text
        assert "sk-right-key" not in text


def test_health(backend: OpenAICompatBackend, server: OpenAIServer) -> None:
    assert backend.health() is True
    server.stop()
    assert backend.health() is False


def test_64_concurrent_calls_are_all_served(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    def call(i: int) -> str:
        return backend.generate(ask(f"q{i} [delay:300]")).text

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(call, range(64)))
    assert answers == [f"Answer: Q{i}" for i in range(64)]
    assert len(server.requests) == 64
    assert time.monotonic() - started < 5  # one after another would take 19 s


def test_metrics_report_requests_in_flight(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    def scraped() -> str:
        return httpx.get(f"{server.root_url}/metrics").text

    calls = [
        threading.Thread(target=backend.generate, args=(ask(f"[delay:1000] {i}"),))
        for i in range(3)
    ]
    for call in calls:
        call.start()
    try:
        wait_for(
            lambda: 'vllm:num_requests_waiting{model_name="scripted"} 3.0' in scraped(),
            5,
            "three requests waiting",
        )
        assert 'vllm:num_requests_running{model_name="scripted"} 0.0' in scraped()
    finally:
        for call in calls:
            call.join()
    wait_for(lambda: server.in_flight == 0, 5, "the server to count down after replying")


def test_stopping_a_stream_early_closes_its_connection() -> None:
    with OpenAIServer(token_delay_s=0.01) as server:
        client = OpenAICompatBackend(server.base_url, server.model)
        try:
            pieces = client.stream(ask("[words:500]"))
            assert [next(pieces).text for _ in range(3)] == ["w1", " w2", " w3"]
            pieces.close()
            wait_for(lambda: server.streams_aborted == 1, 5, "the server to see the stream go")
            wait_for(lambda: server.in_flight == 0, 5, "the aborted stream to end")
            assert client.generate(ask("again")).text == "Answer: AGAIN"
        finally:
            client.close()


def test_a_client_passed_in_stays_open(server: OpenAIServer) -> None:
    with httpx.Client() as http:
        backend = OpenAICompatBackend(server.base_url, server.model, client=http)
        backend.close()
        assert backend.generate(ask("hi")).text == "Answer: HI"
