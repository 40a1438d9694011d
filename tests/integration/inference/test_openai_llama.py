"""The OpenAI backend against a real OpenAI-compatible server: llama-cpp-python's, serving
SmolLM2-135M-Instruct (tests/fixtures/llama_server.py). What the model says is its own; what
is checked is what agentq relies on: answers and streams come back whole, cut at max_tokens
and counted (the server's usage, else the model's tokenizer); tool calls, unary and streamed
in fragments, name an offered tool with arguments that fit its schema; results go back as
``role: "tool"`` messages the server takes; a model the server lacks is named."""

from __future__ import annotations

from collections.abc import Iterator

import jsonschema
import pytest

from app.agents.tools import TOOLS
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
from app.inference.tokens import TokenCounter
from app.local.llama_server import LlamaServer
from app.local.llm import prepare_model
from tests.fixtures.llama_server import LLAMA_MODEL

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.integration

CALC = TOOLS["calculator"].schema()
COUNT = TOOLS["word_count"].schema()
SYSTEM = Message("system", "You are a helpful assistant.")


def ask(
    user: str, tools: tuple[ToolSchema, ...] = (), tool_choice: str = "auto", max_tokens: int = 64
) -> ChatRequest:
    messages = (SYSTEM, Message("user", user))
    return ChatRequest(messages, GenerationParams(max_tokens), tools, tool_choice=tool_choice)


@pytest.fixture(scope="module")
def backend(
    llama_openai: LlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OpenAICompatBackend]:
    """The backend on the server, counting what the server does not with the model's tokenizer."""
    tokenizer = prepare_model(tmp_path_factory.mktemp("smollm2-tokenizer"))
    counter = TokenCounter("openai", {LLAMA_MODEL: tokenizer}, LLAMA_MODEL)
    client = OpenAICompatBackend(llama_openai.base_url, LLAMA_MODEL, timeout_s=60, counter=counter)
    yield client
    client.close()


def assert_valid_calls(calls: tuple[ToolCall, ...], *offered: str) -> None:
    """Each call names an offered tool and its arguments fit that tool's schema."""
    assert calls
    for call in calls:
        assert call.error is None, call.error
        assert call.name in offered
        assert call.id
        jsonschema.validate(call.args, TOOLS[call.name].schema().parameters)


def test_an_answer_is_counted_from_the_servers_usage(backend: OpenAICompatBackend) -> None:
    reply = backend.generate(ask("Say hello.", max_tokens=8))
    assert isinstance(reply, Completion)
    assert reply.text.strip()
    assert reply.tool_calls == ()
    assert reply.replica == backend.base_url
    assert reply.counted == "server"
    assert reply.tokens_in > 0 and 0 < reply.tokens_out <= 8  # max_tokens cuts the reply


def test_a_stream_is_pieces_then_its_counts(backend: OpenAICompatBackend) -> None:
    *pieces, last = backend.stream(ask("Tell me about the sea.", max_tokens=12))
    assert len(pieces) > 1 and all(d.text and not d.tool_calls for d in pieces)
    # This server sends no usage on streams (stream_options is ignored): the tokenizer counts.
    assert last == Delta(tokens_in=last.tokens_in, tokens_out=last.tokens_out, counted="tokenizer")
    assert last.tokens_in and last.tokens_out
    assert last.tokens_out <= 12  # max_tokens cuts the stream too


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
def test_a_named_tool_is_called_with_schema_valid_arguments(
    backend: OpenAICompatBackend, stream: bool
) -> None:
    request = ask("What is 40+2?", (CALC, COUNT), "calculator")
    if stream:
        deltas = list(backend.stream(request))
        calls = tuple(c for d in deltas for c in d.tool_calls)
        assert "".join(d.text for d in deltas) == ""
    else:
        calls = backend.generate(request).tool_calls
    assert_valid_calls(calls, "calculator")


def test_required_with_one_tool_gets_a_call(backend: OpenAICompatBackend) -> None:
    reply = backend.generate(ask("What is 6*7?", (CALC,), "required"))
    assert_valid_calls(reply.tool_calls, "calculator")
    assert reply.counted == "server"


def test_with_auto_the_model_answers_or_calls_offered_tools(backend: OpenAICompatBackend) -> None:
    reply = backend.generate(ask("Use the calculator: what is 40+2?", (CALC, COUNT)))
    if reply.tool_calls:  # the model's choice; either way the reply is well formed
        assert_valid_calls(reply.tool_calls, "calculator", "word_count")
    else:
        assert reply.text.strip()


def test_a_tool_result_goes_back_and_the_model_answers(backend: OpenAICompatBackend) -> None:
    asked = ask("What is 40+2?", (CALC,), "calculator")
    (call,) = backend.generate(asked).tool_calls
    answered = ChatRequest(
        (
            *asked.messages,
            Message("assistant", "", tool_calls=(call,)),
            Message("tool", "42", tool_call_id=call.id, name=call.name),
        ),
        GenerationParams(max_tokens=16),
        (CALC,),
        tool_choice="none",
    )
    reply = backend.generate(answered)
    assert reply.tool_calls == ()
    assert reply.text.strip()
    assert reply.counted == "server"


def test_a_model_the_server_lacks_is_named(backend: OpenAICompatBackend) -> None:
    # This server answers any model name with its one model: the model list tells.
    assert backend.health()
    assert backend.missing_models([LLAMA_MODEL, "no-such-model"]) == ["no-such-model"]
