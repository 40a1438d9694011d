"""A step's model call: the response cache, the backend (streamed to the run's relay when it
streams), a trace span, one repair turn for a tool call that does not parse; and how its tokens
are counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from app.agents.guardrails import Budget
from app.agents.registry import AgentSpec
from app.config import Settings
from app.errors import ToolCallParseError
from app.inference.backend import (
    ChatRequest,
    Completion,
    Delta,
    InferenceBackend,
    Message,
    Route,
    ToolCall,
    count_tokens,
)
from app.inference.cancel import check
from app.inference.chat import Counted
from app.inference.templates import repair_message
from app.memory.response_cache import ResponseCache
from app.ops import tracing
from app.tasks.relay import TokenRelay
from app.tasks.steps import StepMessage


class ModelCalls:
    """Makes a step's model calls; every collaborator is passed in."""

    def __init__(
        self,
        settings: Settings,
        backends: Mapping[str, InferenceBackend],
        relay: TokenRelay,
        responses: ResponseCache,
        token_counters: Mapping[str, Any],
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.relay = relay
        self.responses = responses
        self.token_counters = token_counters

    def reply(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        request: ChatRequest,
        session_id: str | None,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """The model's reply to ``request``, traced (and relayed when the run streams).

        A reply whose tool call does not parse gets one repair turn in the same step: the
        model is asked again with its reply and what was wrong; a second bad reply raises
        the ToolCallParseError (the run fails with its reason). ``cancel`` set (the run was
        cancelled) aborts the call in flight and stops the relay: ModelCallCancelledError."""
        try:
            return self._traced(spec, msg, request, session_id, cancel)
        except ToolCallParseError as exc:
            bad = (Message("assistant", exc.reply), repair_message(exc.reason))
            repair = replace(request, messages=request.messages + bad)
            return self._traced(spec, msg, repair, session_id, cancel)

    def _traced(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        request: ChatRequest,
        session_id: str | None,
        cancel: threading.Event | None,
    ) -> Completion:
        with tracing.span("agentq.model_call", None, "client", backend=spec.backend) as span:
            completion = self._infer(spec, msg, request, session_id, cancel)
            span.set(
                replica=completion.replica,
                tokens_in=completion.tokens_in,
                tokens_out=completion.tokens_out,
                tokens_counted=completion.counted,
            )
        return completion

    def prompt_tokens(self, spec: AgentSpec, request: ChatRequest, budget: Budget) -> int:
        """The conversation's tokens before the call (the budget's check): counted with the
        agent's model's tokenizer when it has one, else estimated."""
        if budget.max_tokens_in is None:
            return 0  # nothing to check them against: not counted twice per call
        counter = self.token_counters.get(spec.backend)
        if counter is None:
            return request.estimated_tokens()
        return counter.request_tokens(request)[0]

    def text_tokens(self, spec: AgentSpec, text: str) -> int:
        """``text``'s tokens for the agent's model: its tokenizer's count, else an estimate."""
        counter = self.token_counters.get(spec.backend)
        if counter is None:
            return count_tokens(text)
        return counter.count(spec.model or counter.default_model or "", text)[0]

    def kept_counted(self, spec: AgentSpec) -> Counted:
        """How the reply an earlier delivery kept was counted (a draft does not say): as the
        agent's backend counts, the server's usage on OpenAI, else the model's tokenizer."""
        counter = self.token_counters.get(spec.backend)
        if counter is None:
            return "estimate"
        if spec.backend == "openai":
            return "server"
        has_tokenizer = counter.tokenizer(spec.model or counter.default_model or "") is not None
        return "tokenizer" if has_tokenizer else "estimate"

    def _infer(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        request: ChatRequest,
        session_id: str | None,
        cancel: threading.Event | None,
    ) -> Completion:
        """The model's reply, from the response cache when the agent uses it (a streamed run
        gets a cached reply's text relayed in one piece)."""
        if not self.responses.applies(spec):
            return self._generate(spec, msg, request, session_id, cancel)
        backend = self.backends[spec.backend]
        completion, cached = self.responses.answer(
            spec, backend, request,
            lambda: self._generate(spec, msg, request, session_id, cancel), msg.tenant,
        )  # fmt: skip
        if cached and msg.stream:
            self.relay.attempt(msg.tenant, msg.run_id, msg.step)
            if completion.text:
                self.relay.token(msg.tenant, msg.run_id, msg.step, completion.text)
        return completion

    def _generate(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        request: ChatRequest,
        session_id: str | None,
        cancel: threading.Event | None,
    ) -> Completion:
        backend = self.backends[spec.backend]
        route = Route(session_id, self.settings.inference.strategy_for(spec.name))
        if not msg.stream:
            return backend.generate(request, route=route, cancel=cancel)
        started = time.perf_counter()
        self.relay.attempt(msg.tenant, msg.run_id, msg.step)
        pieces: list[str] = []
        calls: tuple[ToolCall, ...] = ()
        counts = Delta()
        replica: str = spec.backend  # a replica pool names the server on the first piece
        stream = backend.stream(request, route=route, cancel=cancel)
        try:
            for delta in stream:
                check(cancel, spec.backend)  # nothing more is relayed once the run is cancelled
                if delta.text:
                    pieces.append(delta.text)
                    self.relay.token(msg.tenant, msg.run_id, msg.step, delta.text)
                calls = delta.tool_calls or calls
                replica = delta.replica or replica
                if delta.counted is not None:  # the stream's counts (server or tokenizer)
                    counts = delta
        finally:
            close = getattr(stream, "close", None)
            if close is not None:  # stopped early: the server is told now, not at GC
                close()
        text = "".join(pieces)
        latency = time.perf_counter() - started
        if counts.counted is None:  # a stream that does not count its tokens (echo)
            tokens_in, tokens_out = request.estimated_tokens(), count_tokens(text)
            return Completion(text, tokens_in, tokens_out, latency, replica, calls)
        tokens_in, tokens_out = counts.tokens_in or 0, counts.tokens_out or 0
        return Completion(text, tokens_in, tokens_out, latency, replica, calls, counts.counted)
