"""The conversation a step sends to its model, and the answer read from a final reply. Pure.

Each backend tells its server of the tools and reads their calls in its own protocol (OpenAI's
``tools`` / ``tool_calls``; the model's chat template on Triton, :mod:`app.inference.templates`).
A reply
without tool calls is the run's answer: ``{"final": <any JSON>}`` gives that JSON, any other
text is taken verbatim (documented in docs/agents.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.inference.chat import Message, ToolCall, result_text


@dataclass(frozen=True, slots=True)
class Turn:
    """One finished step as the model sees it: what it said, the calls it made and their
    results, in call order."""

    model_output: str
    calls: tuple[tuple[ToolCall, Any], ...] = ()


def render_input(value: Any) -> str:
    """Run input as message text: strings verbatim, other JSON values compactly encoded."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def conversation(
    system_prompt: str,
    run_input: Any,
    turns: Sequence[Turn],
    history: Iterable[tuple[Any, Any]] = (),
) -> tuple[Message, ...]:
    """The turns of the next step: the system prompt, the session's earlier runs (input and
    answer), this run's input, then each finished step's reply and its calls' results."""
    messages = [Message("system", system_prompt)]
    for past_input, past_answer in history:
        messages.append(Message("user", render_input(past_input)))
        messages.append(Message("assistant", render_input(past_answer)))
    messages.append(Message("user", render_input(run_input)))
    for turn in turns:
        calls = tuple(call for call, _ in turn.calls)
        messages.append(Message("assistant", turn.model_output, tool_calls=calls))
        messages.extend(
            Message("tool", result_text(result), tool_call_id=call.id, name=call.name)
            for call, result in turn.calls
        )
    return tuple(messages)


def answer_of(text: str) -> Any:
    """The answer in a final reply: the value of ``{"final": ...}``, else the text itself."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return text
        if isinstance(data, dict) and "final" in data:
            return data["final"]
    return text


MEMORY_HEADER = "What you remember from earlier conversations (most relevant first):"


def memory_section(
    texts: Sequence[str], max_tokens: int, count: Callable[[str], int]
) -> tuple[str, int]:
    """The system prompt's section of retrieved memories and how many it shows: the header,
    then ``- <text>`` per memory in the order given (best first), each added only if the
    section stays within ``max_tokens`` (``count``: a text's tokens); empty when none fits."""
    used = count(MEMORY_HEADER)
    lines = []
    for text in texts:
        line = "- " + " ".join(text.split())
        tokens = count(line)
        if used + tokens > max_tokens:
            continue  # a shorter one further down may still fit
        lines.append(line)
        used += tokens
    if not lines:
        return "", 0
    return "\n".join([MEMORY_HEADER, *lines]), len(lines)
