"""The ``echo`` backend: no model server; every call answers with the run's input, final.

For agent types that check a deployment without a model (smoke tests of queues, workers and
the session store) and for load tests of everything but inference (``agentq bench
dispatch``). A run of such an agent still takes its lease, loads its session, builds its
prompt and commits its step; it ends after that one step, with its input as the answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from app.constants import PROMPT_USER
from app.inference.backend import Completion, GenerationParams, Route, count_tokens


def echo_reply(prompt: str) -> str:
    """``{"final": <the prompt's last user line>}``: a final answer, whatever the input says."""
    _, found, rest = prompt.rpartition("\n" + PROMPT_USER)  # build_prompt puts System first
    line = rest.split("\n", 1)[0] if found else ""
    return json.dumps({"final": line})


class EchoBackend:
    """An :class:`~app.inference.backend.InferenceBackend` that answers without a server."""

    name = "echo"

    def generate(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Completion:
        text = echo_reply(prompt)
        return Completion(text, count_tokens(prompt), count_tokens(text), 0.0, self.name)

    def stream(
        self,
        prompt: str,
        params: GenerationParams,
        *,
        route: Route | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[str]:
        yield echo_reply(prompt)

    def health(self) -> bool:
        return True

    def close(self) -> None:
        pass
