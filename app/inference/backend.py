"""What the agent loop needs from a model server, whatever serves it (Triton, OpenAI-compatible)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


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
class Route:
    """What a replica pool needs to place a call: the run's session and the agent's strategy.

    A single-server backend ignores it.
    """

    session_id: str | None = None
    strategy: str | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """One model reply and what it cost.

    Token counts are whitespace-separated words, an approximation: the server's tokenizer is
    not known to the client.
    """

    text: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    replica: str


def count_tokens(text: str) -> int:
    """Approximate token count: whitespace-separated words."""
    return len(text.split())


class InferenceBackend(Protocol):
    """A model server as the workers use it; safe to call from many threads.

    ``timeout_s`` bounds one call (default: the backend's own); ``route`` places it on a
    replica when the backend is a pool.
    """

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        """The whole reply to ``prompt``; raises ModelRefusedError or InferenceUnavailableError."""
        ...

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[str]:
        """The reply to ``prompt`` as pieces that concatenate to the whole text."""
        ...

    def health(self) -> bool:
        """True when the server and its models are ready to serve."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
