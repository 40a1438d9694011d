"""The ``echo`` backend: no model server; every call answers with the run's input, final.

For agent types that check a deployment without a model (smoke tests of queues, workers and
the session store) and for load tests of everything but inference (``agentq bench
dispatch``). A run of such an agent still takes its lease, loads its session, builds its
conversation and commits its step; it ends after that one step, with its input as the answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterator

from app.inference.backend import ChatRequest, Completion, Delta, Route, count_tokens
from app.inference.cancel import check


def echo_reply(request: ChatRequest) -> str:
    """``{"final": <the last user turn's content>}``: a final answer, whatever the input says."""
    users = [m.content for m in request.messages if m.role == "user"]
    return json.dumps({"final": users[-1] if users else ""})


class EchoBackend:
    """An :class:`~app.inference.backend.InferenceBackend` that answers without a server."""

    name = "echo"

    def generate(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        check(cancel, self.name)
        text = echo_reply(request)
        return Completion(text, request.estimated_tokens(), count_tokens(text), 0.0, self.name)

    def stream(
        self,
        request: ChatRequest,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        check(cancel, self.name)
        yield Delta(echo_reply(request))

    def cache_identity(self, request: ChatRequest) -> tuple[str, str]:
        """The reply depends on the messages only."""
        return self.name, echo_reply(request)

    def model_version(self, request: ChatRequest) -> str | None:
        """Echo never changes."""
        return "1"

    def health(self) -> bool:
        return True

    def missing_models(self, models: Collection[str]) -> list[str]:
        """None: echo needs no model."""
        return []

    def close(self) -> None:
        pass
