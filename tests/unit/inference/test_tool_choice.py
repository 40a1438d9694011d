"""tool_choice: whether a reply must call a tool, per agent and per reply, on the wire to
OpenAI servers and as guided decoding (the call's JSON Schema) to Triton."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from app.agents.registry import AgentSpec
from app.errors import ToolCallParseError
from app.inference.chat import ChatRequest, GenerationParams, Message, ToolSchema
from app.inference.openai_wire import request_body
from app.inference.templates import ChatTemplate
from app.inference.triton import TritonBackend, build_inputs

CALC = ToolSchema(
    "calculator",
    "Evaluate arithmetic.",
    {
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)
COUNT = ToolSchema(
    "word_count",
    "Count words.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


def _request(choice: str, tools: tuple[ToolSchema, ...] = (CALC, COUNT)) -> ChatRequest:
    return ChatRequest(
        (Message("user", "what is 2+3?"),), GenerationParams(16), tools, tool_choice=choice
    )


def test_an_agent_gives_one_choice_per_reply_and_the_last_for_the_rest() -> None:
    spec = AgentSpec(name="calc", tools=("calculator",), tool_choice=("required", "none"))
    assert [spec.tool_choice_at(i) for i in range(4)] == ["required", "none", "none", "none"]
    assert AgentSpec(name="calc").tool_choice_at(3) == "auto"
    assert AgentSpec(name="calc", tools=("calculator",), tool_choice="calculator")


@pytest.mark.parametrize("choice", ["calc", ["required", "kv_get"], []])
def test_a_choice_that_names_no_tool_of_the_agent_is_refused(choice) -> None:
    with pytest.raises(ValidationError, match="tool_choice"):
        AgentSpec(name="calc", tools=("calculator",), tool_choice=choice)


@pytest.mark.parametrize(
    ("choice", "must_call"),
    [("auto", False), ("none", False), ("required", True), ("calculator", True)],
)
def test_a_reply_must_call_a_tool_when_required_or_named(choice, must_call) -> None:
    assert _request(choice).must_call is must_call
    assert _request(choice, tools=()).must_call is False  # nothing to call


def test_the_call_schema_admits_a_call_of_each_allowed_tool_with_its_own_arguments() -> None:
    schema = _request("required").call_schema()
    jsonschema.validate({"name": "calculator", "arguments": {"expression": "2+3"}}, schema)
    jsonschema.validate({"name": "word_count", "arguments": {"text": "a b"}}, schema)
    bad = [
        {"name": "kv_get", "arguments": {}},  # not a tool of the request
        {"name": "calculator", "arguments": {"expr": "2+3"}},  # not its arguments
        {"name": "calculator"},  # no arguments
        {"name": "calculator", "arguments": {"expression": "1"}, "extra": 1},
    ]
    for call in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(call, schema)
    named = _request("word_count").call_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "calculator", "arguments": {"expression": "1"}}, named)


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        ("calculator", {"type": "function", "function": {"name": "calculator"}}),
    ],
)
def test_openai_servers_get_tool_choice_as_the_api_spells_it(choice, sent) -> None:
    body = request_body("m", _request(choice), stream=False)
    assert body.get("tool_choice") == sent
    assert "tool_choice" not in request_body("m", _request(choice, tools=()), stream=False)


def test_required_with_one_tool_is_sent_as_that_tools_name() -> None:
    body = request_body("m", _request("required", tools=(CALC,)), stream=False)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "calculator"}}


def test_triton_gets_the_call_schema_as_guided_decoding_inputs() -> None:
    backend = TritonBackend("127.0.0.1:1", chat_templates={"ensemble": "hermes"})
    call = backend._prepare(_request("required"))
    assert call.guide is not None
    kind, guide = call.guide
    assert kind == "json_schema" and json.loads(guide) == _request("required").call_schema()
    names = {t.name() for t in build_inputs(call.prompt, GenerationParams(8), guide=call.guide)}
    assert {"guided_decoding_guide_type", "guided_decoding_guide"} <= names
    assert backend._prepare(_request("auto")).guide is None
    plain = {t.name() for t in build_inputs("p", GenerationParams(8))}
    assert "guided_decoding_guide" not in plain


def test_a_constrained_reply_is_read_as_one_call_and_a_broken_one_is_a_parse_error() -> None:
    backend = TritonBackend("127.0.0.1:1", chat_templates={"ensemble": "hermes"})
    call = backend._prepare(_request("required"))
    text, calls = call.read(' {"name": "calculator", "arguments": {"expression": "2+3"}}')
    assert text == "" and [(c.name, c.args) for c in calls] == [
        ("calculator", {"expression": "2+3"})
    ]
    with pytest.raises(ToolCallParseError):
        call.read('{"name": "calculator", "arguments": ')
    # A server that ignores the guide (the scripted model) answers in the template's format.
    assert call.read("It is 5.") == ("It is 5.", ())


def test_with_tool_choice_none_tools_are_not_described_and_no_call_is_read() -> None:
    backend = TritonBackend("127.0.0.1:1", chat_templates={"ensemble": "hermes"})
    call = backend._prepare(_request("none"))
    assert "calculator" not in call.prompt and call.guide is None
    assert "calculator" in backend._prepare(_request("auto")).prompt
    reply = '<tool_call>{"name": "calculator", "arguments": {}}</tool_call>'
    assert call.read(reply) == (reply, ())
    assert ChatTemplate.named("hermes").parse(reply)[1]  # auto would have called it


def test_an_engine_without_guided_decoding_gets_no_guide() -> None:
    backend = TritonBackend(
        "127.0.0.1:1", chat_templates={"ensemble": "hermes"}, guided_decoding=False
    )
    call = backend._prepare(_request("required"))
    assert call.guide is None
    assert call.read('<tool_call>{"name": "calculator", "arguments": {}}</tool_call>')[1]
