"""TritonBackend rendering with the scripted models' own chat template on the real Triton."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from app.config import Settings
from app.errors import ToolCallParseError
from app.inference.backend import Message, ToolCall, ToolSchema
from app.inference.templates import TOOL_CALL_OPEN, repair_message
from app.inference.triton import TritonBackend
from app.local.triton import TritonServer
from tests.fixtures.chats import scripted_request

pytestmark = pytest.mark.integration

CALC = ToolSchema("calculator", "Evaluate an expression.", {"type": "object"})


@pytest.fixture
def backend(triton_server: TritonServer) -> Iterator[TritonBackend]:
    settings = Settings().triton
    client = TritonBackend(
        triton_server.grpc_url, timeout_s=30, chat_templates=settings.chat_templates
    )
    yield client
    client.close()


def _with_tools(user: str, *results: str):
    return replace(scripted_request(user, *results), tools=(CALC,))


def test_a_request_with_tools_is_rendered_with_the_template_and_answered_in_its_format(
    backend: TritonBackend,
) -> None:
    request = _with_tools('add [tool:calculator {"expression": "2+3"}]')
    prompt = backend.template(request).render(request)
    assert prompt.startswith("<|im_start|>system\n") and "<tools>" in prompt
    call = backend.generate(request)
    assert call.tool_calls == (ToolCall("call_0", "calculator", {"expression": "2+3"}),)
    assert call.text == ""  # the <tool_call> block is the call, not content
    final = backend.generate(_with_tools('add [tool:calculator {"expression": "2+3"}]', "5"))
    assert (final.text, final.tool_calls) == ("Answer: 5", ())


def test_a_stream_ends_with_the_calls_parsed_in_the_templates_format(
    backend: TritonBackend,
) -> None:
    deltas = list(backend.stream(_with_tools('[tool:calculator {"expression": "1+1"}]')))
    assert "".join(d.text for d in deltas).startswith(TOOL_CALL_OPEN)
    assert [d.tool_calls for d in deltas if d.tool_calls] == [
        (ToolCall("call_0", "calculator", {"expression": "1+1"}),)
    ]


def test_a_call_that_does_not_parse_raises_and_the_repair_turn_gets_a_good_one(
    backend: TritonBackend,
) -> None:
    request = _with_tools('[badtool:calculator {"expression": "7"}]')
    with pytest.raises(ToolCallParseError) as caught:
        backend.generate(request)
    with pytest.raises(ToolCallParseError):
        list(backend.stream(request))  # at the stream's end, once the text is whole
    bad = caught.value
    turns = (Message("assistant", bad.reply), repair_message(bad.reason))
    repaired = replace(request, messages=(*request.messages, *turns))
    assert backend.generate(repaired).tool_calls == (
        ToolCall("call_0", "calculator", {"expression": "7"}),
    )


def test_a_model_without_a_template_still_gets_lines(triton_server: TritonServer) -> None:
    client = TritonBackend(triton_server.grpc_url, timeout_s=30, chat_templates={})
    try:
        request = _with_tools('[tool:calculator {"expression": "1"}]')
        assert client.template(request).render(request).startswith("System: ")
        assert client.generate(request).tool_calls == (
            ToolCall("call_0", "calculator", {"expression": "1"}),
        )
    finally:
        client.close()
