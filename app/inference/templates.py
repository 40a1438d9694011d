"""Chat templates: a conversation rendered for a model on Triton as its tokenizer expects, and
the tool calls read back from its reply.

A :class:`ChatTemplate` renders a :class:`~app.inference.chat.ChatRequest` as Hugging Face's
``apply_chat_template`` does (sandboxed Jinja2, ``trim_blocks``/``lstrip_blocks``, HF's
``tojson``, ``raise_exception``, ``strftime_now``; variables ``messages``, ``tools``,
``add_generation_prompt``, ``bos_token``, ``eos_token``). Its :class:`ToolCallFormat` reads a
reply: Hermes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks. A template is
loaded from a tokenizer folder / ``tokenizer_config.json`` or named: ``hermes`` (ChatML with
Hermes tools, built in) or ``lines`` (:mod:`app.inference.text_protocol`, the fallback).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.errors import ConfigurationError, ToolCallParseError
from app.inference import text_protocol
from app.inference.chat import ChatRequest, Message, ToolCall

if TYPE_CHECKING:
    import jinja2

LINES, HERMES = "lines", "hermes"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# The repair turn's opening words; the scripted model recognises them (models/scripted).
REPAIR_PREFIX = "Your tool call did not parse"

# ChatML with Hermes-style tools, as Qwen2.5's template: the system turn lists the tools'
# JSON specs in <tools></tools>; calls are <tool_call> blocks in the assistant turn; tool
# results are <tool_response> blocks in one user turn per run of consecutive results.
HERMES_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' %}
{%- set system = messages[0].content %}
{%- set rest = messages[1:] %}
{%- else %}
{%- set system = 'You are a helpful assistant.' %}
{%- set rest = messages %}
{%- endif %}
{{- bos_token }}
{{- '<|im_start|>system\\n' + system }}
{%- if tools %}
{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}
{{- '\\n' + tool | tojson }}
{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and ' }}
{{- 'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' }}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for message in rest %}
{%- if message.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}
{{- '\\n' + message.content }}
{%- endif %}
{%- for call in message.tool_calls %}
{{- '\\n<tool_call>\\n{"name": ' + call.function.name | tojson + ', "arguments": ' }}
{{- call.function.arguments | tojson + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # HF's tojson: plain json.dumps (Jinja's own escapes HTML characters).
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled in HF's sandboxed environment (jinja2 is imported by the workers
    whose models have chat templates only)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def message_data(message: Message) -> dict[str, Any]:
    """``message`` as chat templates read it (HF's / OpenAI's message shape)."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.args},
            }
            for call in message.tool_calls
        ]
    if message.role == "tool":
        data["tool_call_id"] = message.tool_call_id
        data["name"] = message.name
    return data


def _tools_section(tools: list[dict[str, Any]]) -> str:
    # HERMES_TEMPLATE's words (a unit test renders both and compares).
    specs = "".join("\n" + _tojson(tool) for tool in tools)
    return (
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        f"{specs}\n</tools>\n\nFor each function call, return a json object with function name "
        "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def hermes_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """``messages`` (:func:`message_data`) for a template that knows nothing of tools, written
    as HERMES_TEMPLATE renders them: the tools described in the system turn, an assistant
    turn's calls as ``<tool_call>`` blocks in its content, each run of tool results as one
    user turn of ``<tool_response>`` blocks."""
    out: list[dict[str, Any]] = []
    if tools:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        described = system if system is not None else "You are a helpful assistant."
        out.append({"role": "system", "content": described + _tools_section(tools)})
        messages = messages[1:] if system is not None else messages
    previous = None
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "tool":
            block = f"<tool_response>\n{content}\n</tool_response>"
            if previous == "tool":
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block})
        elif role == "assistant" and message.get("tool_calls"):
            parts = [content] if content else []
            for call in message["tool_calls"]:
                name, args = call["function"]["name"], call["function"]["arguments"]
                body = f'{{"name": {_tojson(name)}, "arguments": {_tojson(args)}}}'
                parts.append(f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}")
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append({"role": role, "content": content})
        previous = role
    return out


class ToolCallFormat(Protocol):
    """How a model writes tool calls in its reply."""

    marker: str | None  # what opens a call (None: the reply has no such marker)

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """The reply's content and its tool calls; raises ToolCallParseError for a call that
        opens the marker but does not parse."""
        ...


_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)


class HermesFormat:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, several allowed
    (ids ``call_0``, ``call_1``, ...); the text outside them is the content."""

    marker: str | None = TOOL_CALL_OPEN

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """See :class:`ToolCallFormat`."""
        if TOOL_CALL_OPEN not in text:
            return text, ()
        calls = [call_of_body(i, m.group(1), text) for i, m in enumerate(_BLOCK.finditer(text))]
        content = _BLOCK.sub("", text)
        if TOOL_CALL_OPEN in content:
            raise ToolCallParseError(f"{TOOL_CALL_OPEN} is not closed by {TOOL_CALL_CLOSE}", text)
        if TOOL_CALL_CLOSE in content:
            raise ToolCallParseError(f"{TOOL_CALL_CLOSE} without {TOOL_CALL_OPEN}", text)
        return content.strip(), tuple(calls)


def call_of_body(index: int, body: str, reply: str) -> ToolCall:
    """The ``index``-th call of ``reply`` from its JSON ``body`` (``{"name", "arguments"}``, a
    ``<tool_call>`` block's content or a whole schema-constrained reply); raises
    ToolCallParseError."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ToolCallParseError(f"call {index + 1} is not valid JSON ({exc})", reply) from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise ToolCallParseError(f'call {index + 1} has no "name" string', reply)
    args = data.get("arguments", {})
    if isinstance(args, str):  # some models send the arguments JSON-encoded, as OpenAI does
        with contextlib.suppress(json.JSONDecodeError):
            args = json.loads(args)
    if not isinstance(args, dict):
        raise ToolCallParseError(f'"arguments" of call {index + 1} is not a JSON object', reply)
    return ToolCall(f"call_{index}", data["name"], args)


class LinesFormat:
    """The reply format of :mod:`app.inference.text_protocol` (never raises: no marker)."""

    marker: str | None = None

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """See :class:`ToolCallFormat`."""
        return text_protocol.parse(text)


class ChatTemplate:
    """Renders requests for one model and reads its replies.

    ``source``: Jinja2 text, or HF's list of ``{"name", "template"}`` (``tool_use`` when tools
    are sent, else ``default``); None: the ``lines`` protocol.
    """

    def __init__(
        self,
        source: str | list[dict[str, str]] | None,
        *,
        bos_token: str = "",
        eos_token: str = "",
        name: str = "",
    ) -> None:
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.name = name
        self.format: ToolCallFormat = LinesFormat() if source is None else HermesFormat()

    @cached_property
    def _compiled(self) -> dict[str, jinja2.Template]:
        if self.source is None:
            return {}
        if isinstance(self.source, str):
            return {"default": compile_template(self.source)}
        return {item["name"]: compile_template(item["template"]) for item in self.source}

    @cached_property
    def knows_tools(self) -> bool:
        """Whether the template renders tools, calls and results itself; one that never says
        "tool" (plain ChatML, as SmolLM2's) gets them written into the turns the Hermes way
        (:func:`hermes_messages`)."""
        if isinstance(self.source, list):
            return any("tool" in item["template"] for item in self.source)
        return self.source is not None and "tool" in self.source

    def _pick(self, tools: bool) -> jinja2.Template:
        compiled = self._compiled
        if tools and "tool_use" in compiled:
            return compiled["tool_use"]
        if "default" in compiled:
            return compiled["default"]
        if len(compiled) == 1:
            return next(iter(compiled.values()))
        names = ", ".join(sorted(compiled))
        raise ConfigurationError(f"chat template {self.name!r} has no 'default' ({names})")

    def render(self, request: ChatRequest) -> str:
        """The prompt for ``request``, ending with the assistant turn opened."""
        if self.source is None:
            return text_protocol.render(request)
        template = self._pick(bool(request.tools))
        messages = [message_data(m) for m in request.messages]
        tools = [t.function_spec() for t in request.tools] or None
        if not self.knows_tools:
            messages, tools = hermes_messages(messages, tools), None
        return template.render(
            messages=messages,
            tools=tools,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def parse(self, text: str) -> tuple[str, tuple[ToolCall, ...]]:
        """The reply's content and tool calls (see :class:`ToolCallFormat`)."""
        return self.format.parse(text)

    @classmethod
    def named(cls, name: str) -> ChatTemplate:
        """A built-in template: ``lines`` or ``hermes``."""
        if name == LINES:
            return cls(None, name=name)
        if name == HERMES:
            return cls(HERMES_TEMPLATE, name=name)
        raise ConfigurationError(
            f"no built-in chat template {name!r} (built in: {LINES}, {HERMES}); or give the "
            "path of a tokenizer folder or tokenizer_config.json"
        )

    @classmethod
    def from_config(cls, path: Path) -> ChatTemplate:
        """The ``chat_template`` of a tokenizer folder or its ``tokenizer_config.json``."""
        file = path / "tokenizer_config.json" if path.is_dir() else path
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigurationError(f"cannot read chat template from {file}: {exc}") from exc
        source = config.get("chat_template")
        if not source:
            raise ConfigurationError(f"{file} has no chat_template")
        return cls(
            source,
            bos_token=_token(config.get("bos_token")),
            eos_token=_token(config.get("eos_token")),
            name=str(file),
        )


def _token(value: Any) -> str:
    # HF writes special tokens as a string or as an AddedToken dict {"content": ...}.
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return "" if value is None else str(value)


def load_template(spec: str, resolve: Callable[[str], Path] = Path) -> ChatTemplate:
    """The template ``spec`` names: a built-in name, else a path (``resolve`` maps it to a
    file, e.g. relative to the checkout)."""
    if spec in (LINES, HERMES):
        return ChatTemplate.named(spec)
    return ChatTemplate.from_config(resolve(spec))


def repair_message(reason: str) -> Message:
    """The user turn asking the model to write a call that did not parse again."""
    return Message(
        "user",
        f"{REPAIR_PREFIX}: {reason}; reply again with valid JSON inside "
        f'{TOOL_CALL_OPEN}{{"name": ..., "arguments": {{...}}}}{TOOL_CALL_CLOSE}.',
    )
