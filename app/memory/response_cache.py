"""Model replies cached in Redis, for agents whose calls are deterministic.

Off by default: an agent turns it on with ``response_cache: true``, and it applies only when
the agent's temperature is an explicit 0 (None is the server's default, which samples). A
call is keyed (:func:`reply_key`) on the backend kind, the model, its version, the text the
server is sent (Triton: the chat-template-rendered prompt and the guided-decoding guide; an
OpenAI-compatible server: the request body's canonical JSON, messages, tools and tool_choice
included) and the generation parameters. A hit returns the stored reply (text, tool calls,
token counts) without calling the server.

The version makes a new model miss: it is the agent's ``model_version`` when set, else what
the server reports (:class:`~app.inference.backend.Versioned`): Triton's model metadata
(the newest version of the unary and the streaming model, on every replica), or for an
OpenAI-compatible server the ``model`` and ``system_fingerprint`` of its last reply in this
worker. Either is trusted ``cache.version_check_s`` before it is asked again; a call whose
version is unknown is not looked up (``unversioned``), and its reply is stored under the
version it says answered it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from app.agents.registry import AgentSpec
from app.config import CacheSettings
from app.constants import DEFAULT_TENANT, response_cache_key
from app.inference.backend import ChatRequest, Completion, InferenceBackend, ToolCall, Versioned
from app.memory.tool_cache import canonical_json
from app.ops import metrics

CACHED_REPLICA = "response-cache"
"""The ``replica`` of a reply answered from the cache."""


def reply_key(
    kind: str,
    model: str,
    version: str,
    prompt: str,
    request: ChatRequest,
    tenant: str = DEFAULT_TENANT,
) -> str:
    """The Redis key of the reply to ``request`` (see the module docstring)."""
    parts = {
        "backend": kind,
        "model": model,
        "version": version,
        "prompt": prompt,
        "params": dataclasses.asdict(request.params),
    }
    digest = hashlib.sha256(canonical_json(parts).encode()).hexdigest()
    return response_cache_key(digest, tenant)


class ResponseCache:
    """Replies of deterministic model calls in Redis (see the module docstring)."""

    def __init__(
        self, redis: Any, settings: CacheSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = redis
        self.settings = settings
        self._clock = clock
        self._versions: dict[tuple[str, str], tuple[str, float]] = {}  # -> (version, until)
        self._lock = threading.Lock()

    def applies(self, spec: AgentSpec) -> bool:
        """Whether ``spec``'s model calls go through the cache."""
        return self.settings.responses and spec.response_cache and spec.temperature == 0

    def answer(
        self,
        spec: AgentSpec,
        backend: InferenceBackend,
        request: ChatRequest,
        call: Callable[[], Completion],
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Completion, bool]:
        """The reply to ``request``: the cached one (and True), else ``call()``'s, stored;
        among ``tenant``'s replies only."""
        started = time.perf_counter()
        identity = _identity(backend, request)
        if identity is None:
            metrics.response_cache(spec.name, "unversioned")
            return call(), False
        model, prompt = identity
        version = spec.model_version or self._version(spec.backend, model, backend, request)
        key = (
            None
            if version is None
            else reply_key(spec.backend, model, version, prompt, request, tenant)
        )
        if key is not None:
            data = self.redis.get(key)
            if data is not None:
                metrics.response_cache(spec.name, "hit")
                return _completion(data, time.perf_counter() - started), True
        metrics.response_cache(spec.name, "miss" if key is not None else "unversioned")
        completion = call()
        answered = completion.model_version
        if key is None and answered:
            # A server that reports no version up front: the version its reply names, learned.
            self._learn(spec.backend, model, answered)
            key = reply_key(spec.backend, model, answered, prompt, request, tenant)
        if key is not None:
            ttl_s = self.settings.response_ttl_s
            self.redis.set(key, _stored(completion), ex=ttl_s)
        return completion, False

    def _version(
        self, kind: str, model: str, backend: InferenceBackend, request: ChatRequest
    ) -> str | None:
        """The model's version as last learned, asked again once it is older than
        ``version_check_s``."""
        now = self._clock()
        with self._lock:
            known = self._versions.get((kind, model))
        if known is not None and known[1] > now:
            return known[0]
        version = backend.model_version(request) if isinstance(backend, Versioned) else None
        if version is not None:
            self._learn(kind, model, version)
        return version

    def _learn(self, kind: str, model: str, version: str) -> None:
        with self._lock:
            self._versions[(kind, model)] = (version, self._clock() + self.settings.version_check_s)


def _identity(backend: InferenceBackend, request: ChatRequest) -> tuple[str, str] | None:
    if not isinstance(backend, Versioned):
        return None
    try:
        return backend.cache_identity(request)
    except ValueError:  # a pool whose replicas cannot say
        return None


def _stored(completion: Completion) -> str:
    """A reply as kept in Redis (JSON)."""
    return json.dumps(
        {
            "text": completion.text,
            "tokens_in": completion.tokens_in,
            "tokens_out": completion.tokens_out,
            "tool_calls": [call.to_json() for call in completion.tool_calls],
            "counted": completion.counted,
            "model_version": completion.model_version,
        }
    )


def _completion(data: bytes | str, latency_s: float) -> Completion:
    """A kept reply, as answered now by the cache."""
    kept = json.loads(data)
    return Completion(
        text=kept["text"],
        tokens_in=kept["tokens_in"],
        tokens_out=kept["tokens_out"],
        latency_s=latency_s,
        replica=CACHED_REPLICA,
        tool_calls=tuple(ToolCall.from_json(call) for call in kept["tool_calls"]),
        counted=kept["counted"],
        model_version=kept["model_version"],
    )
