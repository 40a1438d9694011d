"""A model call as turns, whatever the server: messages, the tools it may call, its reply.

The agent loop hands every backend a :class:`ChatRequest` (never flattened text); each backend
speaks its server's own protocol with it: OpenAI's ``messages`` / ``tools`` / ``tool_calls`` /
``role: "tool"`` (:mod:`app.inference.openai_compat`), or a prompt rendered with the model's
chat template on Triton (:mod:`app.inference.templates`; :mod:`app.inference.text_protocol`
for a model without one). Replies come back as a :class:`Completion`: text and the tool calls
the model asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
# How a call's tokens were counted: reported by the server, with the model's tokenizer
# (app.inference.tokens), or estimated as whitespace-separated words.
Counted = Literal["server", "tokenizer", "estimate"]
# OpenAI's tool_choice values; any other value names the one tool the reply must call.
AUTO, REQUIRED, NONE = "auto", "required", "none"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asked to run tool ``name`` with ``args``; ``id`` pairs the call with its result.

    ``error`` is set when the server's arguments were not a JSON object: the call is not run,
    and the error goes back to the model as the call's result.
    """

    id: str
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The call as stored (a step's ``tool_calls``)."""
        data: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCall:
        """A call as :meth:`to_json` stored it."""
        return cls(
            str(data["id"]), str(data["name"]), dict(data.get("args") or {}), data.get("error")
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of the conversation.

    ``assistant`` turns may carry ``tool_calls``; a ``tool`` turn answers the call
    ``tool_call_id`` (of tool ``name``) with ``content``, the result as JSON text.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ToolSchema:
    """A tool as the model is told of it: name, what it does, its arguments' JSON Schema."""

    name: str
    description: str
    parameters: dict[str, Any]

    def function_spec(self) -> dict[str, Any]:
        """The tool as OpenAI's ``tools`` entries and Hugging Face chat templates read it."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings of one call; ``None`` leaves the server's default in force."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    random_seed: int | None = None
    stop_words: list[str] | None = None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One model call: the conversation, the tools the model may call, the sampling settings.

    ``model`` names the model on the server (Triton model, OpenAI model id); None: the
    backend's configured default. ``tool_choice`` is OpenAI's: ``auto`` (the model decides),
    ``required`` (the reply must call a tool), ``none`` (it must answer), or a tool's name (it
    must call that one).
    """

    messages: tuple[Message, ...]
    params: GenerationParams
    tools: tuple[ToolSchema, ...] = ()
    model: str | None = None
    tool_choice: str = AUTO

    @property
    def must_call(self) -> bool:
        """Whether the reply must be a tool call (``required`` or a tool's name), which a
        server that constrains decoding can enforce with :meth:`call_schema`."""
        return bool(self.tools) and self.tool_choice not in (AUTO, NONE)

    def call_schema(self) -> dict[str, Any]:
        """The JSON Schema of one tool call this request allows, as a Hermes ``<tool_call>``
        body: ``{"name": <tool>, "arguments": {...}}``, one branch per tool (only the named
        one when ``tool_choice`` names a tool), each with the tool's own argument schema."""
        allowed = [t for t in self.tools if self.tool_choice in (REQUIRED, t.name)] or list(
            self.tools
        )
        branches = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in allowed
        ]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    @classmethod
    def of_prompt(
        cls, prompt: str, params: GenerationParams, model: str | None = None
    ) -> ChatRequest:
        """A request of one user turn (benchmarks, smoke checks)."""
        return cls((Message("user", prompt),), params, model=model)

    def estimated_tokens(self) -> int:
        """The conversation's size in whitespace-separated words: the estimate before a call
        of a model without a tokenizer (:mod:`app.inference.tokens` counts the others)."""
        words = 0
        for message in self.messages:
            words += count_tokens(message.content)
            for call in message.tool_calls:
                words += 1 + count_tokens(json.dumps(call.args))
        return words


@dataclass(frozen=True, slots=True)
class Completion:
    """One model reply and what it cost.

    Token counts are the server's where it reports them, else the model's tokenizer's, else
    an estimate (whitespace-separated words); ``counted`` says which.
    """

    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    replica: str
    tool_calls: tuple[ToolCall, ...] = ()
    counted: Counted = "estimate"
    model_version: str = ""  # the version the server says answered ("": it did not say)


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of a streamed reply: text to show now, or the tool calls once they are whole.

    A stream's last delta may carry the call's token counts (``tokens_in``, ``tokens_out``)
    and how they were counted; a stream without them is estimated by its reader.
    """

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tokens_in: int | None = None
    tokens_out: int | None = None
    counted: Counted | None = None
    replica: str | None = None  # the server streaming it (a replica pool sets it on the first)


def count_tokens(text: str) -> int:
    """The estimate of a text's tokens where neither server nor tokenizer counts:
    whitespace-separated words."""
    return len(text.split())


def result_text(result: Any) -> str:
    """A tool result as a ``tool`` turn's content: strings verbatim, other values as JSON."""
    return result if isinstance(result, str) else json.dumps(result, separators=(",", ":"))
