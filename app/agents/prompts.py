"""Prompt building and reply parsing for the agent loop. Pure functions, no I/O.

Reply format (what a model must produce, documented in docs/agents.md):

- a tool call is one JSON object ``{"tool": "<name>", "args": {...}}``;
- a final answer is ``{"final": <any JSON>}`` or any other text (taken verbatim).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.constants import PROMPT_ASSISTANT, PROMPT_SYSTEM, PROMPT_TOOL, PROMPT_USER


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asked to run ``tool`` with ``args``."""

    tool: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """The model answered; the run ends with ``answer``."""

    answer: Any


Action = ToolCall | FinalAnswer


@dataclass(frozen=True, slots=True)
class Turn:
    """One finished step as the prompt shows it: what the model said and what the tool returned."""

    model_output: str
    tool_result: Any


def render_input(value: Any) -> str:
    """Run input as prompt text: strings verbatim, other JSON values compactly encoded."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _one_line(text: str) -> str:
    # Markers start lines, so content must not: fold newlines into spaces.
    return " ".join(text.split())


def build_prompt(
    system_prompt: str,
    run_input: Any,
    turns: Sequence[Turn],
    history: Iterable[tuple[Any, Any]] = (),
) -> str:
    """The prompt for the next step: system, earlier runs of the session, this run's turns."""
    lines = [PROMPT_SYSTEM + _one_line(system_prompt)]
    for past_input, past_answer in history:
        lines.append(PROMPT_USER + _one_line(render_input(past_input)))
        lines.append(PROMPT_ASSISTANT + _one_line(render_input(past_answer)))
    lines.append(PROMPT_USER + _one_line(render_input(run_input)))
    for turn in turns:
        lines.append(PROMPT_ASSISTANT + _one_line(turn.model_output))
        lines.append(PROMPT_TOOL + _one_line(render_input(turn.tool_result)))
    lines.append(PROMPT_ASSISTANT.rstrip())
    return "\n".join(lines)


def parse_reply(text: str) -> Action:
    """Read a model reply as a tool call or a final answer (see the module docstring)."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return FinalAnswer(text)
        if isinstance(data, dict):
            if isinstance(data.get("tool"), str):
                args = data.get("args", {})
                return ToolCall(data["tool"], args if isinstance(args, dict) else {"value": args})
            if "final" in data:
                return FinalAnswer(data["final"])
    return FinalAnswer(text)
