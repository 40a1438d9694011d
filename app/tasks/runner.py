"""One step of an agent run, independent of Celery: lease, load, infer, tool, commit.

The Celery task (:mod:`app.tasks.run_agent`) is a thin shell that turns the
:class:`StepResult` into "publish the next step", "store the answer" or "retry".
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.agents import AgentRegistry, AgentSpec
from app.config import Settings
from app.errors import InferenceError, InferenceUnavailableError, SubmitError, ToolError
from app.inference.backend import (
    Completion,
    GenerationParams,
    InferenceBackend,
    Route,
    count_tokens,
)
from app.leases import RunLease
from app.memory.sessions import NewRun, RunState, SessionStore, StepRecord
from app.prompts import FinalAnswer, ToolCall, Turn, build_prompt, parse_reply
from app.streaming import TokenRelay
from app.tools import ToolContext, run_tool
from app.validation import validate_run


class Outcome(enum.Enum):
    """What the task shell does after a step."""

    NEXT = "next"  # step committed: publish step `next_step`
    REPUBLISH = "republish"  # step was committed earlier: make sure `next_step` was published
    DONE = "done"  # run succeeded: store `answer` for the run
    FAILED = "failed"  # run ended without an answer: store `reason`
    BUSY = "busy"  # another worker holds the run: try this message again shortly
    SKIP = "skip"  # a stale duplicate message: drop it


@dataclass(frozen=True, slots=True)
class StepMessage:
    """The arguments of one ``agentq.run_agent`` message."""

    run_id: str
    agent: str
    step: int
    input: Any = None
    session_id: str | None = None
    stream: bool = False  # relay the model's tokens to the producer (app.streaming)


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: Outcome
    next_step: int | None = None
    answer: Any = None
    reason: str | None = None


class StepRunner:
    """Executes steps; every collaborator is passed in (tests hand in real or fake ones)."""

    def __init__(
        self,
        settings: Settings,
        registry: AgentRegistry,
        store: SessionStore,
        redis: Any,
        backends: Mapping[str, InferenceBackend],
        worker_name: str = "",
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.redis = redis
        self.backends = backends
        self.lease = RunLease(redis)
        self.relay = TokenRelay(redis, settings.stream)
        self.worker_name = worker_name

    def run_step(self, msg: StepMessage) -> StepResult:
        """Execute ``msg`` once under the run's lease, or say why not."""
        spec = self.registry.get(msg.agent)
        if spec is None:
            reason = f"unknown agent {msg.agent!r} (not in this worker's registry)"
            return StepResult(Outcome.FAILED, reason=reason)
        token = f"{self.worker_name}:{uuid.uuid4().hex}"
        ttl = spec.step_timeout_s or self.settings.worker.step_timeout_s
        if not self.lease.acquire(msg.run_id, token, ttl):
            return StepResult(Outcome.BUSY)
        try:
            return self._run_leased(spec, msg)
        finally:
            self.lease.release(msg.run_id, token)

    def _run_leased(self, spec: AgentSpec, msg: StepMessage) -> StepResult:
        state = self.store.load_run(msg.run_id)
        new_run = None
        if state is None:
            if msg.step != 0:
                return StepResult(Outcome.SKIP)  # a later step of a run never started
            # Created by the commit of its first step: one write per step, step 0 included.
            new_run = NewRun(msg.run_id, spec.name, msg.input, msg.session_id)
            state = new_run.state()
        if state.status == "succeeded":
            return StepResult(Outcome.DONE, answer=state.answer)
        if state.status == "failed":
            return StepResult(Outcome.FAILED, reason=state.error)
        if msg.step != state.next_step:
            # A redelivered message whose step is already committed hands the run on;
            # anything older or newer is a duplicate.
            if msg.step == state.next_step - 1:
                return StepResult(Outcome.REPUBLISH, next_step=state.next_step)
            return StepResult(Outcome.SKIP)
        if msg.step == 0:
            # Producers that bypass submit() (send_task from other services) are checked here.
            try:
                validate_run(self.registry, self.settings, spec.name, state.input, state.session_id)
            except SubmitError as exc:
                return self._fail(msg, "error", f"run refused: {exc}", new_run)
        return self._execute(spec, msg, state, new_run)

    def _execute(
        self, spec: AgentSpec, msg: StepMessage, state: RunState, new_run: NewRun | None
    ) -> StepResult:
        history = []
        if state.session_id:
            # A run not in the store yet comes after every run of its session that is.
            before = None if new_run else state.id
            history = self.store.history(state.session_id, before_run=before)
        turns = [Turn(s.model_output, s.tool_result) for s in state.steps]
        prompt = build_prompt(spec.system_prompt, state.input, turns, history)
        params = GenerationParams(
            max_tokens=spec.max_tokens or self.settings.triton.max_tokens,
            temperature=spec.temperature,
        )
        started = time.perf_counter()
        try:
            completion = self._infer(spec, msg, prompt, params, state.session_id)
        except InferenceUnavailableError:
            raise  # the task retries the step later; nothing was committed
        except InferenceError as exc:
            return self._fail(msg, "error", f"model call failed: {exc}", new_run)
        latency_ms = (time.perf_counter() - started) * 1000
        action = parse_reply(completion.text)
        call = action if isinstance(action, ToolCall) else None
        record = StepRecord(
            step=msg.step,
            kind="tool" if call else "final",
            model_output=completion.text,
            tool=call.tool if call else None,
            tool_args=call.args if call else None,
            tool_result=self._call_tool(spec, msg, call) if call else None,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            latency_ms=latency_ms,
            worker=self.worker_name,
        )
        if isinstance(action, FinalAnswer):
            committed = self.store.commit_step(
                msg.run_id, record, final_answer=action.answer, new_run=new_run
            )
            if not committed:
                return StepResult(Outcome.SKIP)
            if msg.stream:
                self.relay.step(msg.run_id, msg.step, record.kind)
            return StepResult(Outcome.DONE, answer=action.answer)
        last = msg.step + 1 >= spec.max_steps
        reason = (
            f"step budget of {spec.max_steps} exhausted without a final answer" if last else None
        )
        if not self.store.commit_step(msg.run_id, record, failed_reason=reason, new_run=new_run):
            return StepResult(Outcome.SKIP)
        if msg.stream:
            self.relay.step(msg.run_id, msg.step, record.kind, record.tool)
        if reason:
            return StepResult(Outcome.FAILED, reason=reason)
        return StepResult(Outcome.NEXT, next_step=msg.step + 1)

    def _infer(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        prompt: str,
        params: GenerationParams,
        session_id: str | None,
    ) -> Completion:
        backend = self.backends[spec.backend]
        route = Route(session_id, self.settings.inference.strategy_for(spec.name))
        if not msg.stream:
            return backend.generate(prompt, params, route=route)
        started = time.perf_counter()
        self.relay.attempt(msg.run_id, msg.step)
        pieces = []
        for piece in backend.stream(prompt, params, route=route):
            pieces.append(piece)
            self.relay.token(msg.run_id, msg.step, piece)
        text = "".join(pieces)
        latency = time.perf_counter() - started
        return Completion(text, count_tokens(prompt), count_tokens(text), latency, spec.backend)

    def _call_tool(self, spec: AgentSpec, msg: StepMessage, call: ToolCall) -> Any:
        if call.tool not in spec.tools:
            return {"error": f"tool {call.tool!r} is not allowed for agent {spec.name!r}"}
        ctx = ToolContext(run_id=msg.run_id, step=msg.step, agent=spec.name, redis=self.redis)
        try:
            return run_tool(call.tool, call.args, ctx)
        except ToolError as exc:
            return {"error": str(exc)}

    def _fail(
        self, msg: StepMessage, kind: str, reason: str, new_run: NewRun | None = None
    ) -> StepResult:
        record = StepRecord(step=msg.step, kind=kind, model_output="", worker=self.worker_name)
        self.store.commit_step(msg.run_id, record, failed_reason=reason, new_run=new_run)
        return StepResult(Outcome.FAILED, reason=reason)
