"""An OpenAI-compatible chat completions server (NVIDIA NIM, vLLM) over HTTP.

The conversation is sent natively (:mod:`app.inference.openai_wire`): ``messages`` with the
assistant's ``tool_calls`` and ``role: "tool"`` results, and the request's ``tools``; the
reply's tool calls come back in the :class:`Completion`. Errors follow the Triton backend: a
server that did not serve the call (unreachable, late, overloaded) raises
InferenceUnavailableError, retried elsewhere or later; any error the server answered with,
including one inside an HTTP 200 body or an event stream, raises ModelRefusedError, and
ModelNotFoundError when the server has no such model.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Collection, Generator, Iterator
from typing import Any

import httpx

from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelNotFoundError,
    ModelRefusedError,
)
from app.inference.backend import Route
from app.inference.cancel import abort_when, check
from app.inference.chat import ChatRequest, Completion, Counted, Delta, ToolCall
from app.inference.http_abort import CallSocket, abortable_transport, tracking
from app.inference.openai_wire import (
    ToolCallAssembler,
    error_in_body,
    error_message,
    model_ids,
    names_missing_model,
    read_completion,
    read_stream_event,
    request_body,
    sse_data,
)
from app.inference.tokens import TokenCounter

__all__ = ["RETRYABLE_STATUSES", "OpenAICompatBackend", "error_in_body"]

# HTTP statuses of a call the server did not serve (overloaded, gateway down or late): retryable.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Enough for 256 concurrent calls per worker, with headroom for streams being torn down.
MAX_CONNECTIONS = 512
MAX_KEEPALIVE_CONNECTIONS = 256
_HEALTH_TIMEOUT_S = 5.0


class OpenAICompatBackend:
    """An InferenceBackend on one OpenAI-compatible server (``base_url`` ends in ``/v1``).

    ``model`` is sent for requests that name none. One httpx.Client, shared by all threads;
    a client passed in stays open on close().

    Token counts are the server's ``usage`` (asked for on streams too); a reply without one is
    counted with the model's tokenizer (``counter``), else estimated.

    A call given a ``cancel`` event that gets set is aborted: its connection is shut (through
    the client this backend made; a client passed in is only checked between stream chunks)
    and ModelCallCancelledError raised.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        client: httpx.Client | None = None,
        counter: TokenCounter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.counter = counter or TokenCounter("openai", {}, model)
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_client = client is None
        self._client = client or httpx.Client(
            timeout=timeout_s,
            transport=abortable_transport(
                limits=httpx.Limits(
                    max_connections=MAX_CONNECTIONS,
                    max_keepalive_connections=MAX_KEEPALIVE_CONNECTIONS,
                )
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

    def _status_error(self, response: httpx.Response, model: str) -> InferenceError:
        status = response.status_code
        message = error_message(response.text)
        if status in RETRYABLE_STATUSES:
            return InferenceUnavailableError(
                self._redact(f"Server at {self.base_url} unavailable (HTTP {status}): {message}")
            )
        if status == 404 and names_missing_model(response.text, model):
            return ModelNotFoundError(
                self._redact(
                    f"Server at {self.base_url} has no model {model!r} (HTTP 404: {message}); "
                    f"the models it serves are listed at {self.base_url}/models"
                )
            )
        return self._refused(f"refused the call (HTTP {status}): {message}")

    def generate(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """One non-streamed chat completion: its text and the tool calls it asks for."""
        started = time.perf_counter()
        check(cancel, self.base_url)
        body = request_body(self.model, request, stream=False)
        with self._abortable(cancel):
            try:
                response = self._client.post(
                    f"{self.base_url}/chat/completions",
                    json=body,
                    headers=self._headers,
                    timeout=timeout_s or self.timeout_s,
                )
            except httpx.HTTPError as exc:
                check(cancel, self.base_url)  # the connection was shut on purpose
                raise self._unreachable(exc) from exc
        if not response.is_success:
            raise self._status_error(response, body["model"])
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
        tokens_in, tokens_out, counted = self._counts(
            request, reply.text, reply.tool_calls, reply.prompt_tokens, reply.completion_tokens
        )
        return Completion(
            text=reply.text,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_s=time.perf_counter() - started,
            replica=self.base_url,
            tool_calls=reply.tool_calls,
            counted=counted,
            model_version=_answered_version(data),
        )

    @contextlib.contextmanager
    def _abortable(self, cancel: threading.Event | None) -> Iterator[None]:
        """Calls made in the block are aborted (their connection shut) once ``cancel`` is set."""
        if cancel is None:
            yield
            return
        call = CallSocket()
        with abort_when(cancel, call.abort), tracking(call):
            yield

    def _counts(
        self,
        request: ChatRequest,
        text: str,
        calls: tuple[ToolCall, ...],
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> tuple[int, int, Counted]:
        """The call's tokens in and out: the server's usage when it sent both, else counted
        here (the turns, and the reply's text and calls as a turn's are counted)."""
        if prompt_tokens is not None and completion_tokens is not None:
            return prompt_tokens, completion_tokens, "server"
        tokens_in, counted = self.counter.request_tokens(request)
        replied = [text] + [f"{call.name} {json.dumps(call.args)}" for call in calls]
        tokens_out, _ = self.counter.count(self.counter.model_of(request), *replied)
        return tokens_in, tokens_out, counted

    def stream(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[Delta, None, None]:
        """The reply from the event stream, in order, within the timeout: text pieces as they
        come, then the reply's tool calls in one delta once the choice has finished; last,
        the call's token counts (the server's ``usage`` chunk, else counted here).

        Closing the generator early closes the response, so the server sees the connection go.
        """
        check(cancel, self.base_url)
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        body = request_body(self.model, request, stream=True)
        call = CallSocket()
        sent = self._client.build_request(
            "POST",
            f"{self.base_url}/chat/completions",
            json=body,
            headers=self._headers,
            timeout=timeout,
        )
        try:
            with abort_when(cancel, call.abort):
                # Only while the request is sent: between pieces this thread is the reader's.
                with tracking(call) if cancel is not None else contextlib.nullcontext():
                    response = self._client.send(sent, stream=True)
                try:
                    read = self._read_stream(response, request, body["model"], deadline, timeout)
                    for delta in read:
                        check(cancel, self.base_url)
                        yield delta
                finally:
                    response.close()
        except httpx.HTTPError as exc:
            check(cancel, self.base_url)  # the connection was shut on purpose
            raise self._unreachable(exc) from exc
        except InferenceUnavailableError:  # a shut connection can read as a cut stream
            check(cancel, self.base_url)
            raise

    def _read_stream(
        self,
        response: httpx.Response,
        request: ChatRequest,
        model: str,
        deadline: float,
        timeout: float,
    ) -> Generator[Delta, None, None]:
        if not response.is_success:
            response.read()
            raise self._status_error(response, model)
        if response.headers.get("content-type", "").startswith("application/json"):
            response.read()  # an error answered in place of the stream (HTTP 200)
            raise self._refused(
                f"answered JSON, not an event stream: {error_message(response.text)}"
            )
        calls = ToolCallAssembler()
        finished = done = False
        pieces: list[str] = []
        made: tuple[ToolCall, ...] = ()
        prompt_tokens = completion_tokens = None
        for data in sse_data(response.iter_lines()):
            try:
                event = read_stream_event(data)
            except ValueError as exc:
                raise self._refused(str(exc)) from None
            if event.done:
                done = True
                break
            if event.completion_tokens is not None:
                prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
            if event.text:
                pieces.append(event.text)
                yield Delta(text=event.text)
            calls.add(event.tool_calls)
            if event.finished:
                finished = True
                if calls.pending:
                    made = calls.take()
                    yield Delta(tool_calls=made)
            if time.monotonic() > deadline:
                raise InferenceUnavailableError(
                    f"Server at {self.base_url}: stream not finished within {timeout} s"
                )
        if not (finished or done):
            raise InferenceUnavailableError(
                f"Server at {self.base_url} unavailable: the stream ended before the reply did "
                "(connection cut)"
            )
        if calls.pending:  # [DONE] without a finish_reason after them
            made = calls.take()
            yield Delta(tool_calls=made)
        tokens_in, tokens_out, counted = self._counts(
            request, "".join(pieces), made, prompt_tokens, completion_tokens
        )
        yield Delta(tokens_in=tokens_in, tokens_out=tokens_out, counted=counted)

    def _served_models(self) -> set[str] | None:
        """The ids ``GET /models`` lists; None when it does not answer with a model list."""
        try:
            response = self._client.get(
                f"{self.base_url}/models",
                headers=self._headers,
                timeout=min(self.timeout_s, _HEALTH_TIMEOUT_S),
            )
            if response.status_code != 200:
                return None
            return model_ids(response.json())
        except (httpx.HTTPError, ValueError):  # a probe answers; it never raises
            return None

    def missing_models(self, models: Collection[str]) -> list[str]:
        """Those of ``models`` that ``GET /models`` does not list (all when it does not
        answer)."""
        wanted = list(dict.fromkeys(models))
        served = self._served_models()
        return wanted if served is None else [m for m in wanted if m not in served]

    def cache_identity(self, request: ChatRequest) -> tuple[str, str]:
        """The model serving ``request`` and what it is sent: the request body's canonical
        JSON (messages, tools, tool_choice, sampling fields)."""
        body = request_body(self.model, request, stream=False)
        return body["model"], json.dumps(body, sort_keys=True, separators=(",", ":"))

    def model_version(self, request: ChatRequest) -> str | None:
        """None: ``GET /models`` names models, not their versions; the response cache learns
        the version from the replies (:func:`_answered_version`)."""
        return None

    def health(self) -> bool:
        """True when ``GET /models`` answers 200 with a model list.

        The server, not a model: a replica missing one agent's model still serves the others
        (``missing_models`` names what is missing).
        """
        return self._served_models() is not None

    def close(self) -> None:
        """Close the HTTP client if this backend created it."""
        if self._owns_client:
            self._client.close()


def _answered_version(data: Any) -> str:
    """The version a reply says answered it: the model it names (OpenAI names the dated
    snapshot behind an alias) and its ``system_fingerprint`` (the serving configuration)."""
    if not isinstance(data, dict):
        return ""
    model, fingerprint = data.get("model"), data.get("system_fingerprint")
    return f"{model or ''}/{fingerprint or ''}" if model or fingerprint else ""
