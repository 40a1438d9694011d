"""The OpenAI-compatible backend's pure parts: prompt to messages, request and reply reading."""

from __future__ import annotations

import pytest

from app.agents.prompts import Turn, build_prompt
from app.inference.backend import GenerationParams
from app.inference.openai_compat import (
    ChatReply,
    OpenAICompatBackend,
    StreamEvent,
    error_in_body,
    error_message,
    prompt_to_messages,
    read_completion,
    read_stream_event,
    request_body,
    sse_data,
)
from tests.fixtures.openai_server import messages_to_prompt

AGENT_PROMPT = build_prompt(
    "Be brief.",
    "What is 2+3?",
    [Turn('{"tool":"calculator","args":{"expression":"2+3"}}', 5)],
    history=[("hi", "hello")],
)


def test_agent_prompt_becomes_chat_messages():
    assert prompt_to_messages(AGENT_PROMPT) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": '{"tool":"calculator","args":{"expression":"2+3"}}'},
        {"role": "user", "content": "Tool result: 5"},
    ]


def test_messages_rebuild_the_same_prompt_on_the_test_server():
    # The scripted server must see what Triton sees, or the two backends would answer differently.
    assert messages_to_prompt(prompt_to_messages(AGENT_PROMPT)) == AGENT_PROMPT


def test_prompt_without_markers_is_one_user_message():
    assert prompt_to_messages("just a question\nover two lines") == [
        {"role": "user", "content": "just a question\nover two lines"}
    ]
    assert prompt_to_messages("") == [{"role": "user", "content": ""}]


def test_unmarked_lines_continue_the_message_before_them():
    prompt = "preamble\nSystem: rules\nmore rules\nUser: q\nAssistant:"
    assert prompt_to_messages(prompt) == [
        {"role": "user", "content": "preamble"},
        {"role": "system", "content": "rules\nmore rules"},
        {"role": "user", "content": "q"},
    ]


def test_only_the_final_empty_assistant_line_is_dropped():
    messages = prompt_to_messages("User: q\nAssistant: \nTool: x\nAssistant:")
    assert messages == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Tool result: x"},
    ]


def test_request_body_sends_only_the_params_that_are_set():
    body = request_body("m", "User: q\nAssistant:", GenerationParams(max_tokens=7), stream=False)
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "q"}],
        "max_tokens": 7,
        "stream": False,
    }


def test_request_body_maps_every_sampling_param():
    params = GenerationParams(
        max_tokens=9, temperature=0.5, top_p=0.9, top_k=40, random_seed=7, stop_words=["\n"]
    )
    body = request_body("m", "q", params, stream=True)
    assert body["stream"] is True
    assert {k: body[k] for k in ("temperature", "top_p", "top_k", "seed", "stop")} == {
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "stop": ["\n"],
    }
    assert "stop" not in request_body("m", "q", GenerationParams(1, stop_words=[]), stream=True)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "boom", "code": 500}}, "boom"),
        ({"error": "triton says no"}, "triton says no"),
        ({"object": "error", "message": "old vllm", "code": 400}, "old vllm"),
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


def test_completion_with_usage():
    body = {
        "choices": [{"message": {"role": "assistant", "content": "hi there"}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }
    assert read_completion(body) == ChatReply("hi there", 7, 3)


def test_completion_without_usage_or_content():
    assert read_completion({"choices": [{"message": {"content": None}}]}) == ChatReply(
        "", None, None
    )


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


def test_stream_events():
    chunk = '{"choices": [{"delta": {"content": " w2"}, "finish_reason": null}]}'
    assert read_stream_event(chunk) == StreamEvent(text=" w2")
    role = '{"choices": [{"delta": {"role": "assistant", "content": ""}}]}'
    assert read_stream_event(role) == StreamEvent()
    last = '{"choices": [{"delta": {}, "finish_reason": "length"}]}'
    assert read_stream_event(last) == StreamEvent(finished=True)
    assert read_stream_event('{"choices": [], "usage": {"prompt_tokens": 3}}') == StreamEvent()
    assert read_stream_event("[DONE]") == StreamEvent(done=True)


def test_stream_error_events_are_refused():
    with pytest.raises(ValueError, match="mid-stream: out of memory"):
        read_stream_event('{"error": {"object": "error", "message": "out of memory"}}')
    with pytest.raises(ValueError, match="not JSON"):
        read_stream_event("{truncated")


def test_sse_data_joins_lines_skips_comments_and_drops_an_unfinished_event():
    lines = [": keep-alive", "", "data: a", "", "event: x", "data: b1", "data:b2", "", "data: cut"]
    assert list(sse_data(lines)) == ["a", "b1\nb2"]


def test_repr_hides_the_api_key():
    backend = OpenAICompatBackend("http://h:8000/v1/", "m", api_key="sk-secret")
    try:
        assert "sk-secret" not in repr(backend)
        assert backend.base_url == "http://h:8000/v1"
    finally:
        backend.close()
