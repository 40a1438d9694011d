"""OpenAICompatBackend's requests and replies, over an in-memory HTTP transport.

The backend against a real HTTP server (strict about the protocol) is in
tests/integration/inference/test_openai_compat.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.errors import InferenceUnavailableError, ModelNotFoundError, ModelRefusedError
from app.inference.chat import (
    ChatRequest,
    Delta,
    GenerationParams,
    Message,
    ToolCall,
    ToolSchema,
)
from app.inference.openai_compat import OpenAICompatBackend
from app.inference.tokens import TokenCounter

BASE = "http://vllm.test:8000/v1"
PARAMS = GenerationParams(max_tokens=64)
WEATHER = ToolSchema("weather", "The weather in a city.", {"type": "object", "properties": {}})
ASK = ChatRequest((Message("user", "Weather in Oslo and Bergen?"),), PARAMS, (WEATHER,))

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], OpenAICompatBackend]]:
    clients: list[httpx.Client] = []

    def make(handler: Handler) -> OpenAICompatBackend:
        client = httpx.Client(transport=httpx.MockTransport(handler))
        clients.append(client)
        return OpenAICompatBackend(BASE, "default-model", api_key="sk-secret", client=client)

    yield make
    for client in clients:
        client.close()


def _sent(requests: list[httpx.Request]) -> dict[str, Any]:
    return json.loads(requests[-1].content)


def _call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    if call_id is not None:
        call["id"] = call_id
    return call


def _completion(message: dict[str, Any], usage: dict[str, int] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def _events(*chunks: Any) -> httpx.Response:
    lines = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode()
    )


def _delta(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_generate_sends_tools_and_returns_the_tool_calls_with_the_servers_usage(serve) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        calls = [
            _call("call_a", "weather", '{"city": "Oslo"}'),
            _call(None, "weather", '{"city": "Bergen"'),  # no id, arguments cut short
        ]
        return _completion(
            {"role": "assistant", "content": None, "tool_calls": calls},
            {"prompt_tokens": 41, "completion_tokens": 17},
        )

    completion = serve(handler).generate(ASK)
    assert str(requests[-1].url) == f"{BASE}/chat/completions"
    assert requests[-1].headers["authorization"] == "Bearer sk-secret"
    body = _sent(requests)
    assert body["model"] == "default-model"
    assert body["tools"][0]["function"]["name"] == "weather"
    assert completion.text == ""
    assert (completion.tokens_in, completion.tokens_out) == (41, 17)
    assert completion.counted == "server"
    assert completion.replica == BASE
    first, second = completion.tool_calls
    assert first == ToolCall("call_a", "weather", {"city": "Oslo"})
    assert (second.id, second.name, second.args) == ("call_1", "weather", {})
    assert second.error is not None and "not valid JSON" in second.error


def test_generate_without_usage_or_tokenizer_is_an_estimate(serve) -> None:
    backend = serve(lambda _: _completion({"role": "assistant", "content": "It rains in Oslo."}))
    completion = backend.generate(ASK)
    assert completion.text == "It rains in Oslo."
    assert completion.tool_calls == ()
    assert (completion.tokens_in, completion.tokens_out) == (ASK.estimated_tokens(), 4)
    assert completion.counted == "estimate"


def test_an_agents_model_is_sent_instead_of_the_default(serve) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return _completion({"role": "assistant", "content": "hi"})

    serve(handler).generate(ChatRequest.of_prompt("hi", PARAMS, model="llama-3.1-8b"))
    assert _sent(requests)["model"] == "llama-3.1-8b"


def test_stream_yields_text_then_the_tool_calls_once_assembled(serve) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return _events(
            _delta({"role": "assistant", "content": ""}),
            _delta({"content": "Looking"}),
            _delta({"content": " up."}),
            _delta(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": ""},
                        }
                    ]
                }
            ),
            _delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
            _delta(
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_b", "function": {"name": "weather"}},
                    ]
                }
            ),
            _delta({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}),
            _delta({"tool_calls": [{"index": 1, "function": {"arguments": "[1]"}}]}),
            _delta({}, "tool_calls"),
            "[DONE]",
        )

    deltas = list(serve(handler).stream(ASK))
    assert _sent(requests)["stream"] is True
    assert deltas[:2] == [Delta(text="Looking"), Delta(text=" up.")]
    assert len(deltas) == 4 and deltas[3].counted == "estimate"  # no usage chunk was sent
    first, second = deltas[2].tool_calls
    assert first == ToolCall("call_a", "weather", {"city": "Oslo"})
    assert (second.id, second.args) == ("call_b", {})
    assert second.error is not None and "got an array" in second.error


def test_stream_tool_calls_come_at_done_when_no_finish_reason_was_sent(serve) -> None:
    fragment = {"index": 0, "id": "c", "function": {"name": "weather", "arguments": "{}"}}
    backend = serve(lambda _: _events(_delta({"tool_calls": [fragment]}), "[DONE]"))
    deltas = list(backend.stream(ASK))
    assert deltas[0] == Delta(tool_calls=(ToolCall("c", "weather", {}),))
    assert [d.counted for d in deltas] == [None, "estimate"]


def test_stream_cut_after_tool_call_fragments_is_retryable(serve) -> None:
    fragment = {"index": 0, "id": "c", "function": {"name": "weather", "arguments": "{"}}
    backend = serve(lambda _: _events(_delta({"tool_calls": [fragment]})))
    with pytest.raises(InferenceUnavailableError, match="ended before the reply"):
        list(backend.stream(ASK))


@pytest.mark.parametrize(
    "body",
    [
        {
            "error": {
                "message": "The model `nope` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        },
        {"object": "error", "message": "The model `nope` does not exist.", "code": 404},
    ],
)
def test_a_model_the_server_does_not_have_is_model_not_found(serve, body) -> None:
    backend = serve(lambda _: httpx.Response(404, json=body))
    request = ChatRequest.of_prompt("hi", PARAMS, model="nope")
    with pytest.raises(ModelNotFoundError, match=r"vllm\.test:8000/v1 has no model 'nope'") as got:
        backend.generate(request)
    assert isinstance(got.value, ModelRefusedError)
    with pytest.raises(ModelNotFoundError, match="no model 'nope'"):
        list(backend.stream(request))


def test_a_404_of_a_wrong_path_is_refused_but_no_missing_model(serve) -> None:
    backend = serve(lambda _: httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(ModelRefusedError, match="HTTP 404") as got:
        backend.generate(ASK)
    assert not isinstance(got.value, ModelNotFoundError)


def test_refusals_keep_the_api_key_out(serve) -> None:
    message = {"error": {"message": "key sk-secret refused", "code": "invalid_api_key"}}
    backend = serve(lambda _: httpx.Response(401, json=message))
    with pytest.raises(ModelRefusedError) as got:
        backend.generate(ASK)
    assert "sk-secret" not in str(got.value)
    assert "sk-secret" not in repr(backend)


def test_missing_models_are_those_the_model_list_lacks(serve) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "a"}, {"id": "b"}]})

    backend = serve(handler)
    assert backend.missing_models(["a", "c", "b", "d", "c"]) == ["c", "d"]
    assert backend.missing_models([]) == []
    assert str(requests[-1].url) == f"{BASE}/models"
    assert backend.health() is True


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, text="overloaded"),
        httpx.Response(200, text="<html>"),
        httpx.Response(200, json={"error": "no list"}),
    ],
)
def test_every_model_is_missing_when_the_list_cannot_be_read(serve, response) -> None:
    backend = serve(lambda _: response)
    assert backend.missing_models(["a", "b"]) == ["a", "b"]
    assert backend.health() is False


def test_every_model_is_missing_when_the_server_is_unreachable(serve) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    backend = serve(handler)
    assert backend.missing_models(["a"]) == ["a"]
    assert backend.health() is False
    with pytest.raises(InferenceUnavailableError, match="connection failed"):
        backend.generate(ASK)


def test_repr_and_base_url() -> None:
    backend = OpenAICompatBackend("http://h:8000/v1/", "m", api_key="sk-secret")
    try:
        assert "sk-secret" not in repr(backend)
        assert backend.base_url == "http://h:8000/v1"
    finally:
        backend.close()


def test_a_stream_asks_for_its_usage_and_is_counted_by_it(serve) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return _events(
            _delta({"role": "assistant", "content": ""}),
            _delta({"content": "Rain"}),
            _delta({}, "stop"),
            {"choices": [], "usage": {"prompt_tokens": 23, "completion_tokens": 2}},
            "[DONE]",
        )

    deltas = list(serve(handler).stream(ASK))
    assert _sent(requests)["stream_options"] == {"include_usage": True}
    assert deltas == [Delta(text="Rain"), Delta(tokens_in=23, tokens_out=2, counted="server")]


def test_without_usage_a_model_with_a_tokenizer_is_counted_by_it(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "it": 1, "rains": 2, "in": 3, "oslo": 4, ".": 5}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    counter = TokenCounter("openai", {"default-model": tmp_path}, "default-model")

    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["stream"]:
            return _events(_delta({"content": "it rains."}), _delta({}, "stop"), "[DONE]")
        return _completion({"role": "assistant", "content": "it rains in oslo."})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        backend = OpenAICompatBackend(BASE, "default-model", client=client, counter=counter)
        completion = backend.generate(ASK)
        *_, counts = backend.stream(ASK)
    # "Weather in Oslo and Bergen?": every word unknown but "in", 6 tokens with the "?".
    assert (completion.tokens_in, completion.tokens_out, completion.counted) == (6, 5, "tokenizer")
    assert counts == Delta(tokens_in=6, tokens_out=3, counted="tokenizer")
