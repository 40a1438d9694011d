"""The OpenAI chat completions wire format, without I/O: request bodies, replies, stream events.

A :class:`ChatRequest` becomes ``messages`` (assistant turns with ``tool_calls``, results as
``role: "tool"`` messages with their ``tool_call_id``) and ``tools``; a reply's ``tool_calls``
become :class:`ToolCall`\\ s, those whose arguments are not a JSON object carrying the error
(the model is told and can correct them); streamed tool-call fragments are put together by
their ``index``. :mod:`app.inference.openai_compat` sends and reads these over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.inference.chat import AUTO, NONE, REQUIRED, ChatRequest, Message, ToolCall

MAX_MESSAGE_CHARS = 500
# Arguments quoted in an error for the model: enough to recognise them, not the whole blob.
_MAX_ARGUMENTS_SHOWN = 200


def call_json(call: ToolCall) -> dict[str, Any]:
    """A tool call of an assistant turn as OpenAI sends it: arguments as JSON text."""
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": json.dumps(call.args)},
    }


def message_json(message: Message) -> dict[str, Any]:
    """One turn as an OpenAI message.

    A ``tool`` turn carries only its ``tool_call_id`` and content: ``name`` is not in the
    OpenAI schema and strict gateways refuse it. An assistant turn that only calls tools has
    content ``""``: llama-cpp-python refuses OpenAI's null and fails without the field.
    """
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [call_json(call) for call in message.tool_calls],
        }
    return {"role": message.role, "content": message.content}


def request_body(model: str, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/chat/completions`` request: the request's model, else ``model``; ``tools`` with
    their ``tool_choice`` and sampling fields only when set. A stream asks for its token counts
    in a last ``usage`` chunk (``stream_options.include_usage``).

    ``auto`` is sent although it is OpenAI's default: llama-cpp-python leaves the tools out
    of the prompt without it. ``required`` with one tool is sent as that tool's name, which
    means the same and is what servers without ``required`` (llama-cpp-python) implement.

    ``top_k`` is not in the OpenAI API: it is vLLM's extra field, sent only when set.
    """
    params = request.params
    body: dict[str, Any] = {
        "model": request.model or model,
        "messages": [message_json(message) for message in request.messages],
        "max_tokens": params.max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.tools:
        body["tools"] = [tool.function_spec() for tool in request.tools]
        choice = request.tool_choice
        if choice == REQUIRED and len(request.tools) == 1:
            choice = request.tools[0].name
        if choice in (AUTO, REQUIRED, NONE):
            body["tool_choice"] = choice
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": choice}}
    optional = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.random_seed,
        "stop": params.stop_words or None,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


# ---- errors ----


def _error_object(data: Any) -> Any:
    if not isinstance(data, dict):
        return None
    if data.get("object") == "error":  # vLLM's older top-level error
        return data
    error = data.get("error")
    return None if error is None or error == "" or error == {} else error


def error_in_body(data: Any) -> str | None:
    """The error a JSON body reports, or None.

    Knows ``{"error": {"message": ...}}`` (OpenAI, vLLM, also inside HTTP 200 and SSE events),
    ``{"error": "..."}`` (Triton's generate endpoint, proxies) and vLLM's older top-level
    ``{"object": "error", "message": ...}``.
    """
    error = _error_object(data)
    if error is None:
        return None
    if isinstance(error, dict):
        message = error.get("message")
        if message:
            return str(message)
        return "unspecified error" if error is data else json.dumps(error)
    return str(error)


def error_message(text: str) -> str:
    """What an error response says: its JSON error message, else its text (shortened)."""
    try:
        message = error_in_body(json.loads(text))
    except ValueError:
        message = None
    message = message or text.strip() or "(empty body)"
    return message[:MAX_MESSAGE_CHARS]


def names_missing_model(text: str, model: str) -> bool:
    """Whether an HTTP 404 body says the server has no model ``model`` (not a wrong path).

    OpenAI answers code ``model_not_found``; vLLM and NIM "The model `x` does not exist.".
    """
    try:
        error = _error_object(json.loads(text))
    except ValueError:
        return False
    if not isinstance(error, dict):
        return False
    if error.get("code") == "model_not_found":
        return True
    message = str(error.get("message") or "")
    return any(f"{quote}{model}{quote}" in message for quote in ("`", "'", '"'))


def model_ids(data: Any) -> set[str] | None:
    """The ids a ``GET /models`` body lists; None when it is no model list."""
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    return {e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)}


# ---- replies ----


def _shorten(text: str) -> str:
    if len(text) <= _MAX_ARGUMENTS_SHOWN:
        return text
    return text[:_MAX_ARGUMENTS_SHOWN] + f"... ({len(text)} characters)"


def parse_arguments(raw: Any) -> tuple[dict[str, Any], str | None]:
    """A tool call's ``arguments`` as a dict, or ``{}`` and what was wrong with them.

    Missing or blank arguments are a call without arguments; a JSON object sent as such
    (not as text, as some servers do) is taken as it is. Control characters inside strings
    are read as they are: llama.cpp's grammars let a model write a raw newline there.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    if isinstance(raw, dict):
        return raw, None
    if not isinstance(raw, str):
        return {}, f"arguments must be JSON text, got {type(raw).__name__}: {_shorten(str(raw))}"
    try:
        value = json.loads(raw, strict=False)
    except ValueError as exc:
        return {}, f"arguments are not valid JSON ({exc}): {_shorten(raw)}"
    if not isinstance(value, dict):
        kind = "an array" if isinstance(value, list) else type(value).__name__
        return {}, f"arguments must be a JSON object, got {kind}: {_shorten(raw)}"
    return value, None


def tool_call(raw: Any, index: int) -> ToolCall:
    """One entry of a reply's ``tool_calls``; a call without an id gets ``call_<index>``."""
    entry = raw if isinstance(raw, dict) else {}
    function = entry.get("function")
    function = function if isinstance(function, dict) else {}
    call_id = entry.get("id")
    call_id = call_id if isinstance(call_id, str) and call_id else f"call_{index}"
    name = function.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(call_id, "", error=f"the tool call names no tool: {_shorten(str(raw))}")
    args, problem = parse_arguments(function.get("arguments"))
    error = None if problem is None else f"invalid arguments for tool {name!r}: {problem}"
    return ToolCall(call_id, name, args, error)


def tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """A message's ``tool_calls`` (none when absent or not a list)."""
    if not isinstance(raw, list):
        return ()
    return tuple(tool_call(entry, index) for index, entry in enumerate(raw))


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A non-streamed reply: text, tool calls, and the server's token counts when it sent them."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _usage(data: dict[str, Any], name: str) -> int | None:
    usage = data.get("usage")
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) else None


def read_completion(data: Any) -> ChatReply:
    """The reply in a ``chat.completion`` body; ValueError when it holds an error or no choices."""
    problem = error_in_body(data)
    if problem is not None:
        raise ValueError(f"reported an error: {problem}")
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("answered without choices")
    message = choices[0].get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    return ChatReply(
        text=content if isinstance(content, str) else "",
        tool_calls=tool_calls(message.get("tool_calls")),
        prompt_tokens=_usage(data, "prompt_tokens"),
        completion_tokens=_usage(data, "completion_tokens"),
    )


# ---- streams ----


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a streamed reply: a piece of text and tool-call fragments, the reply's
    end, the stream's end, the call's token counts (the ``usage`` chunk)."""

    text: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()  # fragments, as the server sent them
    finished: bool = False  # a choice carried a finish_reason
    done: bool = False  # ``data: [DONE]``
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def read_stream_event(data: str) -> StreamEvent:
    """One SSE event's data; ValueError when it is not JSON or reports an error."""
    if data.strip() == "[DONE]":
        return StreamEvent(done=True)
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ValueError(f"sent an event that is not JSON: {data[:MAX_MESSAGE_CHARS]}") from None
    problem = error_in_body(chunk)
    if problem is not None:
        raise ValueError(f"reported an error mid-stream: {problem}")
    if not isinstance(chunk, dict):
        raise ValueError(f"sent an event that is not a JSON object: {data[:MAX_MESSAGE_CHARS]}")
    prompt_tokens = _usage(chunk, "prompt_tokens")
    completion_tokens = _usage(chunk, "completion_tokens")
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        # e.g. the usage-only chunk at the end
        return StreamEvent(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    delta = choices[0].get("delta")
    delta = delta if isinstance(delta, dict) else {}
    content = delta.get("content")
    fragments = delta.get("tool_calls")
    return StreamEvent(
        text=content if isinstance(content, str) else "",
        tool_calls=tuple(f for f in fragments if isinstance(f, dict))
        if isinstance(fragments, list)
        else (),
        finished=choices[0].get("finish_reason") is not None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
    )


@dataclass
class _PartialCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Streamed tool-call fragments put together by ``index``: a call's id and name come in
    its first fragment, its arguments in pieces over the following ones."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._last: int | None = None

    @property
    def pending(self) -> bool:
        """Whether fragments arrived since the last :meth:`take`."""
        return bool(self._calls)

    def _index(self, fragment: dict[str, Any]) -> int:
        index = fragment.get("index")
        if isinstance(index, int):
            return index
        # No index (not OpenAI's format, but seen): a new id starts a new call.
        call_id = fragment.get("id")
        last = self._calls.get(self._last) if self._last is not None else None
        if last is None or (isinstance(call_id, str) and call_id and call_id != last.id):
            return max(self._calls, default=-1) + 1
        return self._last if self._last is not None else 0

    def add(self, fragments: Iterable[dict[str, Any]]) -> None:
        """Take one event's fragments."""
        for fragment in fragments:
            index = self._index(fragment)
            self._last = index
            partial = self._calls.setdefault(index, _PartialCall())
            call_id = fragment.get("id")
            if isinstance(call_id, str) and call_id and partial.id is None:
                partial.id = call_id
            function = fragment.get("function")
            if not isinstance(function, dict):
                continue
            name = function.get("name")
            if isinstance(name, str) and name and partial.name is None:
                partial.name = name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                partial.arguments.append(arguments)
            elif isinstance(arguments, dict):
                partial.arguments.append(json.dumps(arguments))

    def take(self) -> tuple[ToolCall, ...]:
        """The calls put together so far, in index order; starts over."""
        calls = tuple(
            tool_call(
                {
                    "id": partial.id,
                    "function": {"name": partial.name, "arguments": "".join(partial.arguments)},
                },
                index,
            )
            for index, partial in sorted(self._calls.items())
        )
        self._calls.clear()
        self._last = None
        return calls


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each Server-Sent Event in ``lines``; an event cut off by the end is dropped."""
    buffer: list[str] = []
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            buffer.append(value.removeprefix(" "))
