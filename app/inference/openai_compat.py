"""An OpenAI-compatible chat completions server (NVIDIA NIM, vLLM) over HTTP.

The agent loop builds one text prompt; :func:`prompt_to_messages` turns it into chat messages.
Errors follow the Triton backend: a server that did not serve the call (unreachable, late,
overloaded) raises InferenceUnavailableError, retried elsewhere or later; any error the server
answered with, including one inside an HTTP 200 body or an event stream, raises
ModelRefusedError.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from app.constants import PROMPT_ASSISTANT, PROMPT_SYSTEM, PROMPT_TOOL, PROMPT_USER
from app.errors import InferenceError, InferenceUnavailableError, ModelRefusedError
from app.inference.backend import Completion, GenerationParams, Route, count_tokens

# Tool results travel as user messages: the "tool" role needs the id of an assistant tool_call.
TOOL_RESULT_PREFIX = "Tool result: "
# HTTP statuses of a call the server did not serve (overloaded, gateway down or late): retryable.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Enough for 256 concurrent calls per worker, with headroom for streams being torn down.
MAX_CONNECTIONS = 512
MAX_KEEPALIVE_CONNECTIONS = 256
_HEALTH_TIMEOUT_S = 5.0
_MAX_MESSAGE_CHARS = 500

_ROLES = (
    (PROMPT_SYSTEM, "system"),
    (PROMPT_USER, "user"),
    (PROMPT_ASSISTANT, "assistant"),
    (PROMPT_TOOL, "tool"),
)


def _marker_role(line: str) -> tuple[str, str] | None:
    # The prompt ends with a bare "Assistant:" line, so a marker without its space counts too.
    for marker, role in _ROLES:
        if line.startswith(marker) or line == marker.rstrip():
            return role, line[len(marker) :]
    return None


def prompt_to_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages for a prompt of ``System:``/``User:``/``Assistant:``/``Tool:`` lines.

    A line without a marker continues the message before it; tool results become user
    messages starting with ``Tool result: ``; the final empty ``Assistant:`` line is dropped
    (the server adds the generation prompt). A prompt without markers is one user message.
    """
    lines = prompt.splitlines()
    if not any(_marker_role(line) for line in lines):
        return [{"role": "user", "content": prompt}]
    messages: list[dict[str, str]] = []
    for line in lines:
        found = _marker_role(line)
        if found is None:  # text before the first marker is the user's
            if messages:
                messages[-1]["content"] += "\n" + line
            else:
                messages.append({"role": "user", "content": line})
            continue
        role, content = found
        if role == "tool":
            role, content = "user", TOOL_RESULT_PREFIX + content
        messages.append({"role": role, "content": content})
    if len(messages) > 1 and messages[-1] == {"role": "assistant", "content": ""}:
        messages.pop()
    return messages


def request_body(
    model: str, prompt: str, params: GenerationParams, *, stream: bool
) -> dict[str, Any]:
    """The ``/chat/completions`` request; sampling fields only when set.

    ``top_k`` is not in the OpenAI API: it is vLLM's extra field, sent only when set.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": prompt_to_messages(prompt),
        "max_tokens": params.max_tokens,
        "stream": stream,
    }
    optional = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.random_seed,
        "stop": params.stop_words or None,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def error_in_body(data: Any) -> str | None:
    """The error a JSON body reports, or None.

    Knows ``{"error": {"message": ...}}`` (OpenAI, vLLM, also inside HTTP 200 and SSE events),
    ``{"error": "..."}`` (Triton's generate endpoint, proxies) and vLLM's older top-level
    ``{"object": "error", "message": ...}``.
    """
    if not isinstance(data, dict):
        return None
    if data.get("object") == "error":
        return str(data.get("message") or "unspecified error")
    error = data.get("error")
    if error is None or error == "" or error == {}:
        return None
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error))
    return str(error)


def error_message(text: str) -> str:
    """What an error response says: its JSON error message, else its text (shortened)."""
    try:
        message = error_in_body(json.loads(text))
    except ValueError:
        message = None
    message = message or text.strip() or "(empty body)"
    return message[:_MAX_MESSAGE_CHARS]


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A non-streamed reply: its text and the server's token counts when it sent them."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None


def _usage(data: dict[str, Any], field: str) -> int | None:
    usage = data.get("usage")
    value = usage.get(field) if isinstance(usage, dict) else None
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
    content = message.get("content") if isinstance(message, dict) else None
    return ChatReply(
        text=content if isinstance(content, str) else "",
        prompt_tokens=_usage(data, "prompt_tokens"),
        completion_tokens=_usage(data, "completion_tokens"),
    )


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a streamed reply: a piece of text, the reply's end, the stream's end."""

    text: str = ""
    finished: bool = False  # a choice carried a finish_reason
    done: bool = False  # ``data: [DONE]``


def read_stream_event(data: str) -> StreamEvent:
    """One SSE event's data; ValueError when it is not JSON or reports an error."""
    if data.strip() == "[DONE]":
        return StreamEvent(done=True)
    try:
        chunk = json.loads(data)
    except ValueError:
        raise ValueError(f"sent an event that is not JSON: {data[:_MAX_MESSAGE_CHARS]}") from None
    problem = error_in_body(chunk)
    if problem is not None:
        raise ValueError(f"reported an error mid-stream: {problem}")
    if not isinstance(chunk, dict):
        raise ValueError(f"sent an event that is not a JSON object: {data[:_MAX_MESSAGE_CHARS]}")
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return StreamEvent()  # e.g. the usage-only chunk at the end
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return StreamEvent(
        text=content if isinstance(content, str) else "",
        finished=choices[0].get("finish_reason") is not None,
    )


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each Server-Sent Event in ``lines``; an event cut off by the end is dropped."""
    buffer: list[str] = []
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            buffer.append(value.removeprefix(" "))


class OpenAICompatBackend:
    """An InferenceBackend on one OpenAI-compatible server (``base_url`` ends in ``/v1``).

    One httpx.Client, shared by all threads; a client passed in stays open on close().
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(
                max_connections=MAX_CONNECTIONS,
                max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
            ),
        )

    def __repr__(self) -> str:
        return f"OpenAICompatBackend(base_url={self.base_url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        # Servers may echo a refused key in their message; it must not reach logs.
        return text.replace(self._api_key, "***") if self._api_key else text

    def _refused(self, what: str) -> ModelRefusedError:
        return ModelRefusedError(self._redact(f"Server at {self.base_url} {what}"))

    def _unreachable(self, exc: httpx.HTTPError) -> InferenceError:
        if isinstance(exc, httpx.UnsupportedProtocol):  # a bad URL: retrying will not help
            return self._refused(f"cannot be called: {exc}")
        timed_out = isinstance(exc, httpx.TimeoutException)
        kind = "no reply in time" if timed_out else "connection failed"
        detail = str(exc) or type(exc).__name__
        return InferenceUnavailableError(
            self._redact(f"Server at {self.base_url} unavailable ({kind}): {detail}")
        )

    def _status_error(self, response: httpx.Response) -> InferenceError:
        status = response.status_code
        message = error_message(response.text)
        if status in RETRYABLE_STATUSES:
            return InferenceUnavailableError(
                self._redact(f"Server at {self.base_url} unavailable (HTTP {status}): {message}")
            )
        return self._refused(f"refused the call (HTTP {status}): {message}")

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """One non-streamed chat completion."""
        started = time.perf_counter()
        body = request_body(self.model, prompt, params, stream=False)
        try:
            response = self._client.post(
                f"{self.base_url}/chat/completions",
                json=body,
                headers=self._headers,
                timeout=timeout_s or self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        if not response.is_success:
            raise self._status_error(response)
        try:
            data = response.json()
        except ValueError:
            raise self._refused(
                f"answered a body that is not JSON: {error_message(response.text)}"
            ) from None
        try:
            reply = read_completion(data)
        except ValueError as exc:  # an error reported in a 200 body, or no choices
            raise self._refused(str(exc)) from None
        tokens_in, tokens_out = reply.prompt_tokens, reply.completion_tokens
        return Completion(
            text=reply.text,
            tokens_in=count_tokens(prompt) if tokens_in is None else tokens_in,
            tokens_out=count_tokens(reply.text) if tokens_out is None else tokens_out,
            latency_s=time.perf_counter() - started,
            replica=self.base_url,
        )

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Generator[str, None, None]:
        """Pieces of the reply from the event stream, in order, within the timeout.

        Closing the generator early closes the response, so the server sees the connection go.
        """
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        body = request_body(self.model, prompt, params, stream=True)
        try:
            with self._client.stream(
                "POST",
                f"{self.base_url}/chat/completions",
                json=body,
                headers=self._headers,
                timeout=timeout,
            ) as response:
                yield from self._read_stream(response, deadline, timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _read_stream(
        self, response: httpx.Response, deadline: float, timeout: float
    ) -> Generator[str, None, None]:
        if not response.is_success:
            response.read()
            raise self._status_error(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()  # an error answered in place of the stream (HTTP 200)
            raise self._refused(
                f"answered JSON, not an event stream: {error_message(response.text)}"
            )
        finished = False
        for data in sse_data(response.iter_lines()):
            try:
                event = read_stream_event(data)
            except ValueError as exc:
                raise self._refused(str(exc)) from None
            if event.done:
                return
            if event.text:
                yield event.text
            finished = finished or event.finished
            if time.monotonic() > deadline:
                raise InferenceUnavailableError(
                    f"Server at {self.base_url}: stream not finished within {timeout} s"
                )
        if not finished:
            raise InferenceUnavailableError(
                f"Server at {self.base_url} unavailable: the stream ended before the reply did "
                "(connection cut)"
            )

    def health(self) -> bool:
        """True when ``GET /models`` answers 200 with JSON; False on any error."""
        try:
            response = self._client.get(
                f"{self.base_url}/models",
                headers=self._headers,
                timeout=min(self.timeout_s, _HEALTH_TIMEOUT_S),
            )
            if response.status_code != 200:
                return False
            response.json()
            return True
        except Exception:  # a health probe answers; it never raises
            return False

    def close(self) -> None:
        """Close the HTTP client if this backend created it."""
        if self._owns_client:
            self._client.close()
