"""A conversation as plain text for a model served as text on Triton, and its reply read back.

Pure functions, no I/O. Until Triton models get their own chat templates, a
:class:`~app.inference.chat.ChatRequest` reaches them as marker lines, one per turn
(``System:``, ``User:``, ``Assistant:``, ``Tool:``, content folded to one line), the tools
the model may call listed after the system line, and a bare ``Assistant:`` line for the
model to complete. Reply format (documented in docs/agents.md):

- a tool call is one JSON object ``{"tool": "<name>", "args": {...}}``;
- several calls are a JSON array of such objects;
- a final answer is ``{"final": <any JSON>}`` or any other text.
"""

from __future__ import annotations

import json
from typing import Any

from app.constants import PROMPT_ASSISTANT, PROMPT_SYSTEM, PROMPT_TOOL, PROMPT_USER
from app.inference.chat import ChatRequest, Message, ToolCall, ToolSchema

_MARKERS = {
    "system": PROMPT_SYSTEM,
    "user": PROMPT_USER,
    "assistant": PROMPT_ASSISTANT,
    "tool": PROMPT_TOOL,
}
TOOLS_HEADER = "You can call these tools (arguments as JSON Schema):"
REPLY_FORMAT = (
    'To call a tool, reply with one JSON object {"tool": "<name>", "args": {...}}; to call '
    "several, a JSON array of such objects. To answer, reply "
    '{"final": <any JSON>} or plain text.'
)


def _one_line(text: str) -> str:
    # Markers start lines, so content must not: fold newlines into spaces.
    return " ".join(text.split())


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def calls_text(calls: tuple[ToolCall, ...]) -> str:
    """Tool calls as the model writes them: one object, or an array of several."""
    objects = [{"tool": call.name, "args": call.args} for call in calls]
    return _compact(objects[0] if len(objects) == 1 else objects)


def tools_section(tools: tuple[ToolSchema, ...]) -> list[str]:
    """Lines telling the model which tools exist and how to call them."""
    lines = [TOOLS_HEADER]
    for tool in tools:
        description = _one_line(tool.description)
        lines.append(f"- {tool.name}: {description} Arguments: {_compact(tool.parameters)}")
    lines.append(REPLY_FORMAT)
    return lines


def _turn(message: Message) -> str:
    content = calls_text(message.tool_calls) if message.tool_calls else message.content
    return _MARKERS[message.role] + _one_line(content)


def render(request: ChatRequest) -> str:
    """The prompt for ``request``: its turns as marker lines, the tools after the system line
    (when it offers any), and a bare ``Assistant:`` line for the model to complete."""
    messages = list(request.messages)
    lines: list[str] = []
    if messages and messages[0].role == "system":
        lines.append(_turn(messages.pop(0)))
    if request.tools:
        lines += tools_section(request.tools)
    lines += [_turn(message) for message in messages]
    lines.append(PROMPT_ASSISTANT.rstrip())
    return "\n".join(lines)


def _call(index: int, data: dict[str, Any]) -> ToolCall:
    call_id, name, args = f"call_{index}", data["tool"], data.get("args", {})
    if not isinstance(args, dict):
        error = f"arguments of tool {name!r} must be a JSON object, got {_compact(args)}"
        return ToolCall(call_id, name, {}, error)
    return ToolCall(call_id, name, args)


def _is_call(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("tool"), str)


def parse(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """``text`` as is and the tool calls it asks for: one when it is a tool-call object,
    each in order when it is a non-empty array of them (ids ``call_0``, ``call_1``, ...);
    none for anything else (a final answer)."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return text, ()
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return text, ()
    if _is_call(data):
        return text, (_call(0, data),)
    if isinstance(data, list) and data and all(_is_call(item) for item in data):
        return text, tuple(_call(i, item) for i, item in enumerate(data))
    return text, ()
