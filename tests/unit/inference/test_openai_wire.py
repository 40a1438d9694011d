"""The OpenAI wire format: a ChatRequest as messages and tools, replies and stream events read."""

from __future__ import annotations

import json

import pytest

from app.inference.chat import ChatRequest, GenerationParams, Message, ToolCall, ToolSchema
from app.inference.openai_wire import (
    ChatReply,
    StreamEvent,
    ToolCallAssembler,
    error_in_body,
    error_message,
    model_ids,
    names_missing_model,
    parse_arguments,
    read_completion,
    read_stream_event,
    request_body,
    sse_data,
    tool_call,
)

PARAMS = GenerationParams(max_tokens=64)
WEATHER = ToolSchema(
    "weather",
    "Today's weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "Weather in Oslo and Bergen?"),
    Message(
        "assistant",
        "",
        tool_calls=(
            ToolCall("call_a", "weather", {"city": "Oslo"}),
            ToolCall("call_b", "weather", {"city": "Bergen"}),
        ),
    ),
    Message("tool", '{"sky":"rain"}', tool_call_id="call_a", name="weather"),
    Message("tool", '{"sky":"sun"}', tool_call_id="call_b", name="weather"),
)


def test_conversation_is_sent_as_openai_turns_with_tool_calls_and_tool_messages():
    body = request_body(
        "default-model", ChatRequest(CONVERSATION, PARAMS, (WEATHER,)), stream=False
    )
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo and Bergen?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Bergen"}'},
                },
            ],
        },
        # No "name": it is not in OpenAI's tool message schema and strict gateways refuse it.
        {"role": "tool", "tool_call_id": "call_a", "content": '{"sky":"rain"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": '{"sky":"sun"}'},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Today's weather in a city.",
                "parameters": WEATHER.parameters,
            },
        }
    ]


def test_assistant_text_stays_beside_its_tool_calls_and_plain_turns_have_no_tool_calls():
    turns = (
        Message("user", "q"),
        Message("assistant", "Let me look.", tool_calls=(ToolCall("c1", "weather", {}),)),
        Message("tool", "{}", tool_call_id="c1"),
        Message("assistant", "It rains."),
        Message("user", "thanks"),
    )
    messages = request_body("m", ChatRequest(turns, PARAMS, (WEATHER,)), stream=False)["messages"]
    assert messages[1]["content"] == "Let me look."
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert messages[3] == {"role": "assistant", "content": "It rains."}


def test_request_model_overrides_the_backends_and_tools_are_left_out_when_none():
    body = request_body("default-model", ChatRequest.of_prompt("hi", PARAMS), stream=False)
    assert body == {
        "model": "default-model",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "stream": False,
    }
    named = ChatRequest.of_prompt("hi", PARAMS, model="llama-3.1-8b")
    assert request_body("default-model", named, stream=True)["model"] == "llama-3.1-8b"


def test_request_body_maps_every_sampling_param():
    params = GenerationParams(
        max_tokens=9, temperature=0.5, top_p=0.9, top_k=40, random_seed=7, stop_words=["\n"]
    )
    body = request_body("m", ChatRequest.of_prompt("q", params), stream=True)
    assert body["stream"] is True
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "seed", "stop")} == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n"],
    }
    empty_stop = ChatRequest.of_prompt("q", GenerationParams(1, stop_words=[]))
    assert "stop" not in request_body("m", empty_stop, stream=True)


def test_the_request_body_is_json():
    body = request_body("m", ChatRequest(CONVERSATION, PARAMS, (WEATHER,)), stream=False)
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize(
    ("raw", "args"),
    [
        ('{"city": "Oslo"}', {"city": "Oslo"}),
        ("", {}),
        ("  ", {}),
        (None, {}),
        ({"city": "Oslo"}, {"city": "Oslo"}),  # sent as an object by some servers
        ('{"city": "Oslo\n"}', {"city": "Oslo\n"}),  # a raw newline, as llama.cpp may send
    ],
)
def test_arguments_that_make_an_object(raw, args):
    assert parse_arguments(raw) == (args, None)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('{"city": "Oslo"', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got an array"),
        ('"Oslo"', "must be a JSON object, got str"),
        ("42", "must be a JSON object, got int"),
        (42, "must be JSON text, got int"),
    ],
)
def test_arguments_that_are_no_object_say_what_was_wrong(raw, problem):
    args, error = parse_arguments(raw)
    assert args == {}
    assert error is not None and problem in error


def test_malformed_arguments_are_quoted_shortened():
    _, error = parse_arguments("{" + "x" * 5000)
    assert error is not None
    assert len(error) < 400
    assert "(5001 characters)" in error


def test_tool_call_with_malformed_arguments_carries_the_error():
    call = tool_call({"id": "c7", "function": {"name": "weather", "arguments": "{oops"}}, 0)
    assert (call.id, call.name, call.args) == ("c7", "weather", {})
    assert call.error is not None
    assert call.error.startswith("invalid arguments for tool 'weather': arguments are not valid")


def test_tool_call_without_id_gets_one_by_its_index_and_without_name_an_error():
    call = tool_call({"type": "function", "function": {"name": "weather", "arguments": "{}"}}, 3)
    assert call == ToolCall("call_3", "weather", {})
    nameless = tool_call({"id": "x", "function": {"arguments": "{}"}}, 0)
    assert nameless.name == "" and nameless.error is not None
    assert "names no tool" in nameless.error


def test_completion_with_tool_calls_and_no_content():
    body = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "weather", "arguments": "not json"},
                        },
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 30, "completion_tokens": 12},
    }
    reply = read_completion(body)
    assert reply.text == ""
    assert (reply.prompt_tokens, reply.completion_tokens) == (30, 12)
    assert reply.tool_calls[0] == ToolCall("call_a", "weather", {"city": "Oslo"})
    assert reply.tool_calls[1].id == "call_b" and reply.tool_calls[1].error is not None


def test_completion_with_text_and_usage():
    body = {
        "choices": [{"message": {"role": "assistant", "content": "hi there"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    assert read_completion(body) == ChatReply("hi there", (), 7, 3)
    assert read_completion({"choices": [{"message": {"content": None}}]}) == ChatReply("")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"error": {"message": "crashed"}}, "reported an error: crashed"),
        ({"id": "x", "object": "chat.completion"}, "without choices"),
        ({"choices": []}, "without choices"),
        ("text", "without choices"),
    ],
)
def test_completion_errors_and_missing_choices_are_refused(body, reason):
    with pytest.raises(ValueError, match=reason):
        read_completion(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "boom", "code": 500}}, "boom"),
        ({"error": "triton says no"}, "triton says no"),
        ({"object": "error", "message": "old vllm", "code": 400}, "old vllm"),
        ({"object": "error"}, "unspecified error"),
        ({"error": {"code": 500}}, '{"code": 500}'),
        ({"error": None, "choices": []}, None),
        ({"choices": [{"message": {"content": "hi"}}]}, None),
        (["not", "a", "dict"], None),
    ],
)
def test_error_in_body(body, expected):
    assert error_in_body(body) == expected


def test_error_message_reads_json_errors_else_the_text():
    assert error_message('{"error": {"message": "bad model"}}') == "bad model"
    assert error_message("<html>502 Bad Gateway</html>\n") == "<html>502 Bad Gateway</html>"
    assert error_message("") == "(empty body)"
    assert len(error_message("x" * 10_000)) == 500


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        # OpenAI
        (
            {
                "error": {
                    "message": "The model `gpt-9` does not exist or you do not have access to it.",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
            True,
        ),
        # vLLM, NIM
        ({"error": {"message": "The model `llama` does not exist.", "code": 404}}, True),
        ({"object": "error", "message": "The model `llama` does not exist.", "code": 404}, True),
        # a wrong path, not a missing model
        ({"detail": "Not Found"}, False),
        ({"error": {"message": "no route /v1/chat", "code": 404}}, False),
    ],
)
def test_a_404_names_a_missing_model_only_when_it_says_so(body, missing):
    model = "gpt-9" if "gpt-9" in json.dumps(body) else "llama"
    assert names_missing_model(json.dumps(body), model) is missing
    assert names_missing_model("<html>Not Found</html>", model) is False


def test_model_ids_of_a_model_list():
    listing = {"object": "list", "data": [{"id": "a", "object": "model"}, {"id": "b"}, {"x": 1}]}
    assert model_ids(listing) == {"a", "b"}
    assert model_ids({"data": []}) == set()
    assert model_ids({"error": "nope"}) is None
    assert model_ids([1]) is None


def test_stream_events():
    chunk = '{"choices": [{"delta": {"content": " w2"}, "finish_reason": null}]}'
    assert read_stream_event(chunk) == StreamEvent(text=" w2")
    role = '{"choices": [{"delta": {"role": "assistant", "content": ""}}]}'
    assert read_stream_event(role) == StreamEvent()
    last = '{"choices": [{"delta": {}, "finish_reason": "length"}]}'
    assert read_stream_event(last) == StreamEvent(finished=True)
    usage = '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}'
    assert read_stream_event(usage) == StreamEvent(prompt_tokens=3, completion_tokens=5)
    assert read_stream_event("[DONE]") == StreamEvent(done=True)
    fragment = {"index": 0, "function": {"arguments": '{"ci'}}
    call = json.dumps({"choices": [{"delta": {"tool_calls": [fragment]}}]})
    assert read_stream_event(call) == StreamEvent(tool_calls=(fragment,))


def test_stream_error_events_are_refused():
    with pytest.raises(ValueError, match="mid-stream: out of memory"):
        read_stream_event('{"error": {"object": "error", "message": "out of memory"}}')
    with pytest.raises(ValueError, match="not JSON"):
        read_stream_event("{truncated")


def test_streamed_tool_calls_are_assembled_by_index():
    calls = ToolCallAssembler()
    assert not calls.pending
    calls.add(
        [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "weather", "arguments": ""},
            }
        ]
    )
    calls.add([{"index": 0, "function": {"arguments": '{"city":'}}])
    calls.add([{"index": 1, "id": "call_b", "function": {"name": "weather", "arguments": "{"}}])
    calls.add([{"index": 0, "function": {"arguments": ' "Oslo"}'}}])
    calls.add([{"index": 1, "function": {"arguments": '"city": "Bergen"}'}}])
    assert calls.pending
    assert calls.take() == (
        ToolCall("call_a", "weather", {"city": "Oslo"}),
        ToolCall("call_b", "weather", {"city": "Bergen"}),
    )
    assert not calls.pending and calls.take() == ()


def test_streamed_tool_call_with_malformed_arguments_or_no_id():
    calls = ToolCallAssembler()
    calls.add([{"index": 2, "function": {"name": "weather", "arguments": '{"city": '}}])
    (call,) = calls.take()
    assert (call.id, call.name, call.args) == ("call_2", "weather", {})
    assert call.error is not None and "not valid JSON" in call.error


def test_streamed_tool_calls_without_index_are_told_apart_by_id():
    calls = ToolCallAssembler()
    calls.add([{"id": "a", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}])
    calls.add([{"id": "b", "function": {"name": "weather", "arguments": "{"}}])
    calls.add([{"function": {"arguments": "}"}}])
    assert calls.take() == (
        ToolCall("a", "weather", {"city": "Oslo"}),
        ToolCall("b", "weather", {}),
    )


def test_sse_data_joins_lines_skips_comments_and_drops_an_unfinished_event():
    lines = [": keep-alive", "", "data: a", "", "event: x", "data: b1", "data:b2", "", "data: cut"]
    assert list(sse_data(lines)) == ["a", "b1\nb2"]
