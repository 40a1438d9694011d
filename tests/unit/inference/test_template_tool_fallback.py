"""A chat template that knows nothing of tools (plain ChatML, as SmolLM2's) gets the tools,
calls and results written into its turns the Hermes way, and the reply is read as Hermes."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.inference.chat import ChatRequest, GenerationParams, Message, ToolCall, ToolSchema
from app.inference.templates import HERMES_TEMPLATE, ChatTemplate

# ChatML and nothing else: every turn as '<|im_start|>role\ncontent<|im_end|>\n'.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CALCULATOR = ToolSchema(
    "calculator",
    "Evaluate an arithmetic expression.",
    {"type": "object", "properties": {"expression": {"type": "string"}}},
)
PARAMS = GenerationParams(max_tokens=8)


def conversation(*, system: bool = True) -> tuple[Message, ...]:
    calls = (
        ToolCall("call_0", "calculator", {"expression": "2+3"}),
        ToolCall("call_1", "calculator", {"expression": "<b>"}),
    )
    messages = [
        Message("user", "2+3, and <b>?"),
        Message("assistant", "Calculating.", tool_calls=calls),
        Message("tool", "5", tool_call_id="call_0", name="calculator"),
        Message("tool", "error: not arithmetic", tool_call_id="call_1", name="calculator"),
        Message("assistant", tool_calls=(ToolCall("call_0", "calculator", {"expression": "1"}),)),
        Message("tool", "1", tool_call_id="call_0", name="calculator"),
    ]
    return (Message("system", "Be brief."), *messages) if system else tuple(messages)


@pytest.mark.parametrize("system", [True, False], ids=["system", "no-system"])
def test_plain_chatml_renders_tools_calls_and_results_as_the_hermes_template(
    system: bool,
) -> None:
    request = ChatRequest(conversation(system=system), PARAMS, tools=(CALCULATOR,))
    plain = ChatTemplate(CHATML).render(request)
    assert not ChatTemplate(CHATML).knows_tools and ChatTemplate(HERMES_TEMPLATE).knows_tools
    assert plain == ChatTemplate(HERMES_TEMPLATE).render(request)


def test_without_tools_a_plain_template_renders_its_own_way() -> None:
    request = ChatRequest((Message("user", "hi"),), PARAMS)
    assert ChatTemplate(CHATML).render(request) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2s_own_template_gets_tools_and_its_reply_is_read_as_a_call(
    tmp_path: Path,
) -> None:
    pytest.importorskip("llama_cpp")
    from app.local.llm import prepare_model

    template = ChatTemplate.from_config(prepare_model(tmp_path))
    assert not template.knows_tools
    request = ChatRequest(conversation(), PARAMS, tools=(CALCULATOR,))
    prompt = template.render(request)
    assert prompt == ChatTemplate(HERMES_TEMPLATE).render(request)
    assert "<|im_start|>tool" not in prompt
    # A question with no system turn keeps SmolLM2's own system prompt.
    plain = template.render(ChatRequest((Message("user", "hi"),), PARAMS))
    assert plain.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    reply = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    assert template.parse(reply) == ("", (ToolCall("call_0", "calculator", {"expression": "6*7"}),))
