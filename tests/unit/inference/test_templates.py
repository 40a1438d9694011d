"""Chat templates: conversations rendered as HF's apply_chat_template does, replies parsed."""

from __future__ import annotations

import json

import jinja2
import pytest
from jinja2.sandbox import SecurityError

from app.config import Settings
from app.config.paths import shipped_path
from app.errors import ConfigurationError, ModelRefusedError, ToolCallParseError
from app.inference import text_protocol
from app.inference.chat import ChatRequest, GenerationParams, Message, ToolCall, ToolSchema
from app.inference.templates import (
    HERMES_TEMPLATE,
    ChatTemplate,
    HermesFormat,
    load_template,
    repair_message,
)

PARAMS = GenerationParams(max_tokens=8)
ADD = ToolSchema(
    "add",
    "Add two numbers.",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
)
CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "2+3 and <b>"),
    Message(
        "assistant",
        "Adding.",
        tool_calls=(ToolCall("call_0", "add", {"a": 2, "b": 3}), ToolCall("call_1", "echo")),
    ),
    Message("tool", "5", tool_call_id="call_0", name="add"),
    Message("tool", '"<b>"', tool_call_id="call_1", name="echo"),
)

EXPECTED = """\
<|im_start|>system
Be brief.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "add", "description": "Add two numbers.", \
"parameters": {"type": "object", "properties": {"a": {"type": "integer"}, \
"b": {"type": "integer"}}}}}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
<|im_start|>user
2+3 and <b><|im_end|>
<|im_start|>assistant
Adding.
<tool_call>
{"name": "add", "arguments": {"a": 2, "b": 3}}
</tool_call>
<tool_call>
{"name": "echo", "arguments": {}}
</tool_call><|im_end|>
<|im_start|>user
<tool_response>
5
</tool_response>
<tool_response>
"<b>"
</tool_response><|im_end|>
<|im_start|>assistant
"""


def test_hermes_renders_tools_calls_and_results_as_chatml():
    request = ChatRequest(CONVERSATION, PARAMS, (ADD,))
    assert ChatTemplate.named("hermes").render(request) == EXPECTED


def test_without_tools_there_is_no_tools_section_and_a_default_system_turn():
    request = ChatRequest.of_prompt("hi", PARAMS)
    assert ChatTemplate.named("hermes").render(request) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_a_tokenizer_config_gives_the_template_and_its_special_tokens(tmp_path):
    config = {
        "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}"
        "{% endfor %}",
        "bos_token": {"content": "<s>", "lstrip": False},
        "eos_token": "</s>",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = load_template(str(tmp_path))
    assert template.render(ChatRequest.of_prompt("hi", PARAMS)) == "<s>hi</s>"


def test_hf_named_templates_use_tool_use_when_tools_are_sent():
    template = ChatTemplate(
        [
            {"name": "default", "template": "plain {{ messages[0].content }}"},
            {"name": "tool_use", "template": "tools {{ tools[0].function.name }}"},
        ]
    )
    assert template.render(ChatRequest.of_prompt("hi", PARAMS)) == "plain hi"
    with_tools = ChatRequest((Message("user", "hi"),), PARAMS, (ADD,))
    assert template.render(with_tools) == "tools add"


def test_tojson_keeps_html_characters_and_takes_hf_options():
    template = ChatTemplate("{{ messages[0] | tojson(indent=1) }}")
    assert template.render(ChatRequest.of_prompt("<é>", PARAMS)) == (
        '{\n "role": "user",\n "content": "<é>"\n}'
    )


def test_raise_exception_and_strftime_now_are_there():
    failing = ChatTemplate("{{ raise_exception('only user turns') }}")
    with pytest.raises(jinja2.TemplateError, match="only user turns"):
        failing.render(ChatRequest.of_prompt("hi", PARAMS))
    year = ChatTemplate("{{ strftime_now('%Y') }}").render(ChatRequest.of_prompt("hi", PARAMS))
    assert year.isdigit() and len(year) == 4


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__ }}",  # attribute access outside the sandbox
        "{{ messages.append(1) }}",  # an immutable sandbox: no mutation
    ],
)
def test_the_sandbox_refuses_unsafe_access(source):
    with pytest.raises(SecurityError):
        ChatTemplate(source).render(ChatRequest.of_prompt("hi", PARAMS))


def test_lines_is_the_text_protocol():
    request = ChatRequest(CONVERSATION, PARAMS, (ADD,))
    lines = load_template("lines")
    assert lines.render(request) == text_protocol.render(request)
    assert lines.parse('{"tool": "add", "args": {"a": 1}}')[1] == (
        ToolCall("call_0", "add", {"a": 1}),
    )


def test_an_unknown_template_name_or_a_config_without_one_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="no built-in chat template"):
        ChatTemplate.named("vicuna")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="has no chat_template"):
        load_template(str(tmp_path))


def test_calls_are_parsed_in_order_and_the_rest_is_the_content():
    reply = (
        'Let me see.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        '\n<tool_call>{"name": "echo", "arguments": "{\\"text\\": \\"x\\"}"}</tool_call>'
    )
    assert HermesFormat().parse(reply) == (
        "Let me see.",
        (ToolCall("call_0", "add", {"a": 1, "b": 2}), ToolCall("call_1", "echo", {"text": "x"})),
    )


def test_a_reply_without_the_marker_is_an_answer():
    assert HermesFormat().parse('Answer: {"name": "add"') == ('Answer: {"name": "add"', ())


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ('<tool_call>{"name": "add", "arguments": {</tool_call>', "call 1 is not valid JSON"),
        ('<tool_call>{"name": "add", "arguments": {}}', "<tool_call> is not closed"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'call 1 has no "name" string'),
        ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>', '"arguments" of call 1'),
        (
            '<tool_call>{"name": "a"}</tool_call><tool_call>[]</tool_call>',
            'call 2 has no "name"',
        ),
    ],
)
def test_a_call_that_does_not_parse_is_a_typed_error_with_the_reason(reply, reason):
    with pytest.raises(ToolCallParseError) as caught:
        HermesFormat().parse(reply)
    assert isinstance(caught.value, ModelRefusedError)  # fails the run, not retried
    assert reason in caught.value.reason and caught.value.reply == reply


def test_the_repair_turn_says_what_was_wrong_and_the_format():
    message = repair_message("call 1 is not valid JSON")
    assert message.role == "user"
    assert "call 1 is not valid JSON" in message.content and "<tool_call>" in message.content


def test_the_built_in_template_is_the_scripted_tokenizers():
    template = load_template(Settings().triton.chat_templates["ensemble"], shipped_path)
    assert template.source == HERMES_TEMPLATE and template.eos_token == "<|im_end|>"
