"""What the agent loop needs from a model server, whatever serves it (Triton, OpenAI-compatible)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.inference.chat import (
    ChatRequest,
    Completion,
    Delta,
    GenerationParams,
    Message,
    ToolCall,
    ToolSchema,
    count_tokens,
)

__all__ = [
    "ChatRequest",
    "Completion",
    "Delta",
    "GenerationParams",
    "InferenceBackend",
    "Message",
    "Route",
    "ToolCall",
    "ToolSchema",
    "Versioned",
    "count_tokens",
]


@dataclass(frozen=True, slots=True)
class Route:
    """What a replica pool needs to place a call: the run's session and the agent's strategy.

    A single-server backend ignores it.
    """

    session_id: str | None = None
    strategy: str | None = None


class InferenceBackend(Protocol):
    """A model server as the workers use it; safe to call from many threads.

    ``timeout_s`` bounds one call (default: the backend's own); ``route`` places it on a
    replica when the backend is a pool; ``cancel``, once set, aborts the call in flight within
    about :data:`app.inference.cancel.CHECK_S` (the server is told: the stream or connection
    is closed) and raises ModelCallCancelledError, never retried.
    """

    def generate(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """The whole reply; raises ModelRefusedError (ModelNotFoundError when the server has
        no such model) or InferenceUnavailableError."""
        ...

    def stream(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        """The reply as pieces: text pieces that concatenate to the whole text, and the
        reply's tool calls in one delta once they are whole."""
        ...

    def health(self) -> bool:
        """True when the server and its default models are ready to serve."""
        ...

    def missing_models(self, models: Collection[str]) -> list[str]:
        """Those of ``models`` the server does not have ready (all of them when it does not
        answer)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Versioned(Protocol):
    """A backend that can say what identifies a reply, for the response cache
    (:mod:`app.memory.response_cache`)."""

    def cache_identity(self, request: ChatRequest) -> tuple[str, str]:
        """The model serving ``request`` and the text it is sent, as the server reads it."""
        ...

    def model_version(self, request: ChatRequest) -> str | None:
        """The version of the model(s) serving ``request`` as the server reports it now;
        None when it does not say."""
        ...
