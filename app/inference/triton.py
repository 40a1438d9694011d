"""Triton over gRPC, speaking the TensorRT-LLM ``ensemble`` interface (v0.19 names and types)."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Collection, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from app.config.paths import shipped_path
from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelNotFoundError,
    ModelRefusedError,
)
from app.inference.backend import (
    ChatRequest,
    Completion,
    Delta,
    GenerationParams,
    Route,
)
from app.inference.cancel import abort_when, check
from app.inference.chat import NONE, ToolCall
from app.inference.templates import LINES, ChatTemplate, call_of_body, load_template
from app.inference.tokens import TokenCounter

# gRPC status codes worth a retry on another replica or later: the server did not serve the
# call (down, overloaded, late); any other code is the model's answer and is not retried.
RETRYABLE_CODES = (
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
)
_HEALTH_TIMEOUT_S = 5.0
# Put in a call's reply queue when its run is cancelled: the waiting thread wakes and aborts.
_CANCELLED = object()
# A unary call's wait outlasts its gRPC deadline by this much before it gives up by itself.
_DEADLINE_SLACK_S = 5.0


def map_error(exc: InferenceServerException, url: str, model: str = "") -> InferenceError:
    """The project error for a tritonclient error: unreachable or late, no such model, or
    refused by the model."""
    status = str(exc.status() or "")
    message = exc.message() or str(exc)
    if any(code in status for code in RETRYABLE_CODES) or "connection refused" in message.lower():
        return InferenceUnavailableError(f"Triton at {url} unavailable ({status}): {message}")
    # A stream's error comes without a status, so the message is the other sign.
    if "NOT_FOUND" in status or "unknown model" in message.lower():
        return ModelNotFoundError(f"Triton at {url} has no model {model!r} ({message})")
    return ModelRefusedError(f"Triton at {url} refused the call ({status}): {message}")


def _tensor(name: str, value: Any, datatype: str, dtype: Any) -> grpcclient.InferInput:
    # Batch dim first: the ensemble has max_batch_size > 0, so a [1] input is rejected.
    data = np.array([value if isinstance(value, list) else [value]], dtype=dtype)
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def build_inputs(
    prompt: str,
    params: GenerationParams,
    *,
    stream: bool | None = None,
    guide: tuple[str, str] | None = None,
) -> list[grpcclient.InferInput]:
    """The ensemble's inputs for one request; optional ones only when set. ``guide``: guided
    decoding's type (``json``, ``json_schema``, ``regex``, ``ebnf_grammar``) and guide text."""
    inputs = [
        _tensor("text_input", prompt.encode("utf-8"), "BYTES", np.object_),
        _tensor("max_tokens", params.max_tokens, "INT32", np.int32),
    ]
    optional: list[tuple[str, Any, str, Any]] = [
        ("temperature", params.temperature, "FP32", np.float32),
        ("top_p", params.top_p, "FP32", np.float32),
        ("top_k", params.top_k, "INT32", np.int32),
        # v0.19 calls the sampling seed "seed" (older releases: "random_seed").
        ("seed", params.random_seed, "UINT64", np.uint64),
        ("stream", stream, "BOOL", np.bool_),
    ]
    inputs += [_tensor(n, v, t, d) for n, v, t, d in optional if v is not None]
    if params.stop_words:
        # stop_words has dims [-1]: one request row holding every stop word, shape [1, n].
        words = [w.encode("utf-8") for w in params.stop_words]
        inputs.append(_tensor("stop_words", words, "BYTES", np.object_))
    if guide is not None:
        kind, text = guide
        inputs.append(_tensor("guided_decoding_guide_type", kind.encode(), "BYTES", np.object_))
        inputs.append(_tensor("guided_decoding_guide", text.encode("utf-8"), "BYTES", np.object_))
    return inputs


@dataclass(frozen=True, slots=True)
class _Call:
    """A request as sent: its template, the prompt, the guide that constrains the reply."""

    request: ChatRequest
    template: ChatTemplate
    prompt: str
    guide: tuple[str, str] | None

    def read(self, reply: str) -> tuple[str, tuple[ToolCall, ...]]:
        """The reply's content and tool calls. A reply constrained to the call schema is
        the call's bare JSON; with tool_choice ``none`` a reply has no calls."""
        if self.request.tool_choice == NONE:
            return reply.strip(), ()
        if self.guide is not None and reply.lstrip().startswith("{"):
            return "", (call_of_body(0, reply.strip(), reply),)
        return self.template.parse(reply)


def _text(result: grpcclient.InferResult) -> str | None:
    chunk = result.as_numpy("text_output")
    if chunk is None or chunk.size == 0:
        return None
    value = chunk.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _callback_error(replies: queue.Queue[tuple[Any, Any]]) -> InferenceServerException | None:
    # A broken stream makes the next send raise a generic error; the cause went to the callback.
    try:
        return replies.get(timeout=1)[1]
    except queue.Empty:
        return None


def _version_order(version: str) -> tuple[int, str]:
    """Triton's model versions are numbers: ``10`` is newer than ``9``."""
    return (int(version), "") if version.isdigit() else (-1, version)


def _is_final(result: grpcclient.InferResult) -> bool:
    param = result.get_response().parameters.get("triton_final_response")
    return bool(param is not None and param.bool_param)


class TritonBackend:
    """An InferenceBackend on one Triton replica.

    A request's ``model`` (else ``model``) serves unary calls; a stream goes to
    ``stream_model`` for the default model, else to ``stream_models[model]``, else to the
    request's model itself. The conversation reaches the model rendered with its chat
    template (``chat_templates``: model -> template spec, :mod:`app.inference.templates`),
    and the reply's tool calls are read back in that template's format; a call that does not
    parse raises ToolCallParseError (the runner asks once more).

    tritonclient documents its clients as not thread-safe, so each calling thread gets its own
    unary client (threading.local), and each stream its own client (a client holds one stream).

    Tokens are counted with the request's model's tokenizer (``counter``): the prompt sent and
    the reply's whole text received; an estimate where the model has none.

    A reply that must call a tool (``tool_choice`` required or a tool's name) is constrained
    by guided decoding to the call's JSON Schema unless ``guided_decoding`` is off; with
    ``tool_choice`` none the tools are not described and the reply is all answer.
    """

    def __init__(
        self,
        url: str,
        model: str = "ensemble",
        stream_model: str = "ensemble_stream",
        timeout_s: float = 60,
        stream_models: Mapping[str, str] | None = None,
        counter: TokenCounter | None = None,
        chat_templates: Mapping[str, str] | None = None,
        guided_decoding: bool = True,
    ) -> None:
        self.url = url
        self.guided_decoding = guided_decoding
        self.chat_templates = dict(chat_templates or {})
        self._templates: dict[str, ChatTemplate] = {}
        self.counter = counter or TokenCounter("triton", {}, model)
        self.model = model
        self.stream_model = stream_model
        self.stream_models = dict(stream_models or {})
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()

    def unary_model(self, request: ChatRequest) -> str:
        """The model serving ``request`` unary."""
        return request.model or self.model

    def streaming_model(self, request: ChatRequest) -> str:
        """The decoupled model streaming ``request``'s reply."""
        model = self.unary_model(request)
        if model == self.model:
            return self.stream_model
        return self.stream_models.get(model, model)

    def template(self, request: ChatRequest) -> ChatTemplate:
        """The chat template of ``request``'s model (else of the model streaming it), loaded
        once; ``lines`` for a model with none configured."""
        model = self.unary_model(request)
        with self._lock:
            template = self._templates.get(model)
            if template is None:
                spec = self.chat_templates.get(model) or self.chat_templates.get(
                    self.streaming_model(request), LINES
                )
                template = self._templates[model] = load_template(spec, shipped_path)
        return template

    def _prepare(self, request: ChatRequest) -> _Call:
        """The prompt for ``request`` (no tools described when it must answer) and, when its
        reply must call a tool, the guide that keeps the call valid: guided decoding with the
        call's JSON Schema (:meth:`ChatRequest.call_schema`), as TensorRT-LLM's XGrammar and
        the local model's llama.cpp grammar enforce."""
        template = self.template(request)
        shown = replace(request, tools=()) if request.tool_choice == NONE else request
        guide = None
        if request.must_call and self.guided_decoding:
            guide = ("json_schema", json.dumps(request.call_schema(), separators=(",", ":")))
        return _Call(request, template, template.render(shown), guide)

    def _client(self) -> grpcclient.InferenceServerClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = grpcclient.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        if client is None:
            return
        self._local.client = None
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        with contextlib.suppress(InferenceServerException):
            client.close()

    def generate(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """One unary call to the request's model; ``cancel`` set aborts it (the gRPC call is
        cancelled, Triton cancels the request) with ModelCallCancelledError."""
        started = time.perf_counter()
        check(cancel, self.url)
        call = self._prepare(request)
        model, prompt = self.unary_model(request), call.prompt
        inputs = build_inputs(prompt, request.params, guide=call.guide)
        timeout = timeout_s or self.timeout_s
        try:
            if cancel is None:
                result = self._client().infer(model, inputs, client_timeout=timeout)
            else:  # async_infer's call can be cancelled; infer's cannot
                result = self._cancellable_infer(model, inputs, timeout, cancel)
        except InferenceServerException as exc:
            error = map_error(exc, self.url, model)
            if isinstance(error, InferenceUnavailableError):
                # gRPC would keep the broken channel in reconnect backoff (up to minutes) even
                # once the server is back: start the next call on a fresh one.
                self._drop_client()
            raise error from exc
        reply = _text(result) or ""
        text, calls = call.read(reply)
        tokens_in, counted = self.counter.count(model, prompt)
        return Completion(
            text=text,
            tokens_in=tokens_in,
            tokens_out=self.counter.count(model, reply)[0],
            latency_s=time.perf_counter() - started,
            replica=self.url,
            tool_calls=calls,
            counted=counted,
            model_version=str(result.get_response().model_version or ""),
        )

    def _cancellable_infer(
        self,
        model: str,
        inputs: list[grpcclient.InferInput],
        timeout: float,
        cancel: threading.Event,
    ) -> grpcclient.InferResult:
        """``infer`` whose gRPC call is cancelled once ``cancel`` is set."""
        done: queue.Queue[tuple[Any, Any]] = queue.Queue()
        context = self._client().async_infer(
            model,
            inputs,
            callback=lambda result, error: done.put((result, error)),
            client_timeout=timeout,
        )
        try:
            with abort_when(cancel, lambda: done.put((_CANCELLED, None))):
                result, error = done.get(timeout=timeout + _DEADLINE_SLACK_S)
        except queue.Empty:
            context.cancel()
            raise InferenceUnavailableError(
                f"Triton at {self.url}: no reply within {timeout} s"
            ) from None
        if result is _CANCELLED:
            context.cancel()
            check(cancel, self.url)
        if error is not None:
            raise error
        return result

    def stream(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Generator[Delta, None, None]:
        """Pieces of the reply from the decoupled model, in order, within the timeout; then
        the reply's tool calls in one delta when the whole text asks for any; then the
        call's token counts. ``cancel`` set stops it with ModelCallCancelledError (the stream
        is closed with its request cancelled, so Triton stops generating)."""
        check(cancel, self.url)
        pieces: list[str] = []
        call = self._prepare(request)
        prompt = call.prompt
        source = self._pieces(self.streaming_model(request), call, timeout_s, cancel)
        try:
            for piece in source:
                pieces.append(piece)
                if call.guide is None:  # a constrained reply is a call's JSON, not text
                    yield Delta(piece)
        finally:
            source.close()  # a reader that stops early cancels the request now
        reply = "".join(pieces)
        text, calls = call.read(reply)  # ToolCallParseError once the stream has ended
        if call.guide is not None and text:  # the server did not constrain: an answer
            yield Delta(text)
        if calls:
            yield Delta(tool_calls=calls)
        model = self.unary_model(request)
        tokens_in, counted = self.counter.count(model, prompt)
        yield Delta(
            tokens_in=tokens_in, tokens_out=self.counter.count(model, reply)[0], counted=counted
        )

    def _pieces(
        self,
        model: str,
        call: _Call,
        timeout_s: float | None,
        cancel: threading.Event | None,
    ) -> Generator[str, None, None]:
        replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
        timeout = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout
        client = grpcclient.InferenceServerClient(self.url)
        finished = False
        try:
            with abort_when(cancel, lambda: replies.put((_CANCELLED, None))):
                # tritonclient calls the callback with keywords: the names must be result and error.
                client.start_stream(
                    callback=lambda result, error: replies.put((result, error)),
                    stream_timeout=timeout,
                )
                client.async_stream_infer(
                    model,
                    build_inputs(call.prompt, call.request.params, stream=True, guide=call.guide),
                    enable_empty_final_response=True,
                )
                while True:
                    try:
                        result, error = replies.get(timeout=max(deadline - time.monotonic(), 0))
                    except queue.Empty:
                        raise InferenceUnavailableError(
                            f"Triton at {self.url}: stream not finished within {timeout} s"
                        ) from None
                    check(cancel, self.url)  # the finally below cancels the request
                    if error is not None:
                        finished = True  # the server ends the request with its error
                        raise map_error(error, self.url, model)
                    piece = _text(result)
                    if piece:
                        yield piece
                    if _is_final(result):
                        finished = True
                        return
        except InferenceServerException as exc:
            raise map_error(_callback_error(replies) or exc, self.url, model) from exc
        finally:
            # Cancel what is left when the caller stops early, so stop_stream does not wait.
            with contextlib.suppress(InferenceServerException):
                client.stop_stream(cancel_requests=not finished)
            with contextlib.suppress(InferenceServerException):
                client.close()

    def cache_identity(self, request: ChatRequest) -> tuple[str, str]:
        """The model serving ``request`` and what it is sent: the template-rendered prompt and
        the guide of guided decoding."""
        call = self._prepare(request)
        guide = "" if call.guide is None else "\n".join(call.guide)
        return self.unary_model(request), f"{call.prompt}\0{guide}"

    def model_version(self, request: ChatRequest) -> str | None:
        """The newest version (the one Triton's default policy serves) of the model serving
        ``request`` unary and of the one streaming it, as ``<unary>/<stream>`` from their
        metadata; None when the server does not answer."""
        try:
            client, timeout = self._client(), self._probe_timeout()
            versions = [
                client.get_model_metadata(model, client_timeout=timeout).versions
                for model in (self.unary_model(request), self.streaming_model(request))
            ]
        except Exception:  # a probe answers; it never raises
            self._drop_client()
            return None
        return "/".join(max(v, key=_version_order, default="") for v in versions)

    def health(self) -> bool:
        """Server ready and the default models ready; False on any error."""
        return self._server_ready() and not self.missing_models([self.model, self.stream_model])

    def missing_models(self, models: Collection[str]) -> list[str]:
        """Those of ``models`` that are not ready here (all of them when the server does not
        answer)."""
        wanted = list(dict.fromkeys(models))
        try:
            client = self._client()
            timeout = self._probe_timeout()
            return [m for m in wanted if not client.is_model_ready(m, client_timeout=timeout)]
        except Exception:  # a probe answers; it never raises
            self._drop_client()  # probe the next time on a fresh channel
            return wanted

    def _server_ready(self) -> bool:
        try:
            return bool(self._client().is_server_ready(client_timeout=self._probe_timeout()))
        except Exception:  # a probe answers; it never raises
            self._drop_client()
            return False

    def _probe_timeout(self) -> float:
        return min(self.timeout_s, _HEALTH_TIMEOUT_S)

    def close(self) -> None:
        """Close every client this backend opened (any thread's)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(InferenceServerException):
                client.close()
        self._local = threading.local()
