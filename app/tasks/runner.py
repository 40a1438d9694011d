"""One step of an agent run, independent of Celery: lease, load, infer, tool, commit.

The Celery task (:mod:`app.tasks.run_agent`) is a thin shell that turns the
:class:`StepResult` into "publish the next step", "store the answer" or "retry".
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import NoScriptError

from app.agents.guardrails import (
    BUDGET_EXCEEDED,
    OUTPUT_REJECTED,
    TOOL_NOT_ALLOWED,
    Budget,
    check_after_call,
    check_before_step,
    first_rejection,
)
from app.agents.prompts import FinalAnswer, ToolCall, Turn, build_prompt, parse_reply
from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.tools import ToolContext, run_tool
from app.agents.validation import validate_run
from app.config import Settings
from app.errors import InferenceError, InferenceUnavailableError, SubmitError, ToolError
from app.inference.backend import (
    Completion,
    GenerationParams,
    InferenceBackend,
    Route,
    count_tokens,
)
from app.memory.sessions import (
    FAILED,
    NO_ANSWER,
    SUCCEEDED,
    NewRun,
    RunState,
    SessionStore,
    StepRecord,
)
from app.memory.tool_cache import MISS, ToolResultCache
from app.ops import metrics, tracing
from app.tasks.leases import RunLease
from app.tasks.relay import TokenRelay
from app.tasks.steps import (
    INPUT_REJECTED,
    MODEL_ERROR,
    UNKNOWN_AGENT,
    Outcome,
    StepMessage,
    StepResult,
    usage,
)

__all__ = [
    "INPUT_REJECTED",
    "MODEL_ERROR",
    "UNKNOWN_AGENT",
    "Outcome",
    "StepMessage",
    "StepResult",
    "StepRunner",
    "usage",
]


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
        self.tool_cache = ToolResultCache(redis)
        self.worker_name = worker_name
        # Runs this process holds a lease on (token -> run id): released at shutdown, so a
        # step handed back unfinished is taken at once elsewhere, not after the lease expires.
        self.held: dict[str, str] = {}
        self._budgets: dict[tuple[str, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}

    def run_step(self, msg: StepMessage, *, keep_lease: bool = False) -> StepResult:
        """Execute ``msg`` once under the run's lease, or say why not.

        With ``keep_lease``, a run that is done keeps its lease, named by ``result.lease``:
        the caller gives it back with :meth:`release`, in the round trip that stores the
        answer. Any other outcome (and any error) releases it here.

        A run's first message on its first delivery takes the lease only before a tool
        call: until then nothing it does has an effect that its commit does not guard (the
        commit creates the run, so of two copies of that message one commits and the other
        reads the outcome), and a new run has nobody else working on it.
        """
        spec = self.registry.get(msg.agent)
        if spec is None:
            reason = f"unknown agent {msg.agent!r} (not in this worker's registry)"
            return StepResult(Outcome.FAILED, reason=reason, error_type=UNKNOWN_AGENT)
        hold = _Hold(msg.run_id, spec.step_timeout_s or self.settings.worker.step_timeout_s)
        if not _deferred(msg) and not self._take(hold):
            return StepResult(Outcome.BUSY)
        kept = False
        try:
            result = self._run_leased(spec, msg, hold)
            kept = keep_lease and result.outcome is Outcome.DONE and hold.token is not None
            return replace(result, lease=hold.token) if kept else result
        finally:
            if not kept and hold.token is not None:
                self.release(msg.run_id, hold.token)

    def _take(self, hold: _Hold) -> bool:
        """Take the run's lease for this step; False when another worker holds it."""
        token = f"{self.worker_name}:{uuid.uuid4().hex}"
        if not self.lease.acquire(hold.run_id, token, hold.ttl_s):
            return False
        self.held[token] = hold.run_id
        hold.token = token
        return True

    def release(self, run_id: str, token: str) -> None:
        """Give back a lease this runner holds (nothing if it was given back already)."""
        if self.held.pop(token, None) is not None:
            self.lease.release(run_id, token)

    @contextmanager
    def releasing(self, run_id: str, token: str, pipe: Any) -> Iterator[None]:
        """Queue the release of a kept lease on Redis pipeline ``pipe``; it counts as given
        back once the block (which executes the pipeline) ends without an error."""
        self.lease.release_on(pipe, run_id, token)
        try:
            yield
        except NoScriptError:
            # Redis lost the script (restart, SCRIPT FLUSH); the pipeline's other commands ran.
            self.lease.release(run_id, token)
        self.held.pop(token, None)

    def release_leases(self) -> int:
        """Give back every lease this process holds (worker shutdown); how many were held."""
        released = 0
        for token, run_id in list(self.held.items()):
            released += bool(self.lease.release(run_id, token))
            self.held.pop(token, None)
        return released

    def _run_leased(self, spec: AgentSpec, msg: StepMessage, hold: _Hold) -> StepResult:
        # A first delivery of step 0 skips the load (one SELECT per run) and the lease:
        # nothing with an effect happens before the store is asked. A tool call takes the
        # lease and loads first, and a commit that fails (the run was there: a duplicate
        # message) loads to decide the outcome.
        deferred = _deferred(msg)
        state = None if deferred else self.store.load_run(msg.run_id)
        new_run = None
        if state is None:
            if msg.step != 0:
                return StepResult(Outcome.SKIP)  # a later step of a run never started
            # Created by the commit of its first step: one write per step, step 0 included.
            new_run = NewRun(
                msg.run_id, spec.name, msg.input, msg.session_id, self._run_budget(spec, msg)
            )
            state = new_run.state()
        else:
            settled = _settled(msg, state)
            if settled is not None:
                return settled
        if msg.step == 0:
            # Producers that bypass submit() (send_task from other services) are checked here.
            try:
                validate_run(  # with the run's own id: no fresh one drawn per step
                    self.registry,
                    self.settings,
                    spec.name,
                    state.input,
                    state.session_id,
                    msg.run_id,
                )
            except SubmitError as exc:
                return self._fail(
                    msg, f"run refused: {exc}", INPUT_REJECTED, new_run, state, deferred
                )
        return self._execute(spec, msg, state, new_run, hold if deferred else None)

    def _run_budget(self, spec: AgentSpec, msg: StepMessage) -> dict[str, Any]:
        """The limits a new run is stored with: its agent's, tightened by the message's (the
        same few in every run, so made once each)."""
        key = (spec.name, tuple(msg.budget.items()) if msg.budget else ())
        limits = self._budgets.get(key)
        if limits is None:
            override = Budget(**msg.budget) if msg.budget else None
            budget = spec.run_budget(self.settings.limits, override)
            if len(self._budgets) >= 1024:
                self._budgets.clear()
            limits = self._budgets[key] = budget.model_dump(exclude_none=True)
        return dict(limits)

    def _stored_outcome(self, msg: StepMessage) -> StepResult | None:
        """For a step whose load was put off: what the store says of its run (None: the
        step may go ahead, its run is not there or waits for this step)."""
        state = self.store.load_run(msg.run_id)
        return None if state is None else _settled(msg, state)

    def _execute(
        self,
        spec: AgentSpec,
        msg: StepMessage,
        state: RunState,
        new_run: NewRun | None,
        unleased: _Hold | None = None,
    ) -> StepResult:
        """The step itself. ``unleased``: a deferred first delivery, which holds neither the
        lease nor a loaded state yet (see :meth:`run_step`)."""
        deferred = unleased is not None
        history = []
        if state.session_id:
            # A run not in the store yet comes after every run of its session that is.
            before = None if new_run else state.id
            history = self.store.history(state.session_id, before_run=before)
        turns = [Turn(s.model_output, s.tool_result) for s in state.steps]
        prompt = build_prompt(spec.system_prompt, state.input, turns, history)
        budget = (
            _budget(tuple(state.budget.items()))
            if state.budget
            else spec.run_budget(self.settings.limits)
        )
        used = usage(state, time.time())
        stop = check_before_step(budget, used, count_tokens(prompt))
        if stop is not None:
            return self._fail(msg, stop, BUDGET_EXCEEDED, new_run, state, deferred)
        params = GenerationParams(
            max_tokens=spec.max_tokens or self.settings.triton.max_tokens,
            temperature=spec.temperature,
        )
        started = time.perf_counter()
        try:
            with tracing.span("agentq.model_call", None, "client", backend=spec.backend) as span:
                completion = self._infer(spec, msg, prompt, params, state.session_id)
                span.set(
                    replica=completion.replica,
                    tokens_in=completion.tokens_in,
                    tokens_out=completion.tokens_out,
                )
        except InferenceUnavailableError:
            raise  # the task retries the step later; nothing was committed
        except InferenceError as exc:
            return self._fail(
                msg, f"model call failed: {exc}", MODEL_ERROR, new_run, state, deferred
            )
        action = parse_reply(completion.text)
        call = action if isinstance(action, ToolCall) else None
        stop = check_after_call(budget, used, completion.tokens_out, call is not None)
        error_type = BUDGET_EXCEEDED if stop else None
        kind, tool_result = "final", None
        if call is not None and stop is None:
            if unleased is not None:
                if not self._take(unleased):
                    return StepResult(Outcome.BUSY)  # a copy of this message holds the run
                settled = self._stored_outcome(msg)
                if settled is not None:
                    return settled  # a duplicate: the tool's effect belongs to the first one
            kind, tool_result = self._call_tool(spec, msg, call)
        elif call is not None:
            kind = "tool"  # asked for, not called: the budget stopped the run first
        if isinstance(action, FinalAnswer) and stop is None:
            rejection = first_rejection(self.registry.output_validators(spec.name), action.answer)
            if rejection is not None:
                stop, error_type = f"answer rejected by {rejection}", OUTPUT_REJECTED
        last_step = budget.max_steps is not None and msg.step + 1 >= budget.max_steps
        if stop is None and call is not None and last_step:
            stop = f"step budget of {budget.max_steps} exhausted without a final answer"
            error_type = BUDGET_EXCEEDED
        record = StepRecord(
            step=msg.step,
            kind=kind,
            model_output=completion.text,
            tool=call.tool if call else None,
            tool_args=call.args if call else None,
            tool_result=tool_result,
            tokens_in=completion.tokens_in,
            tokens_out=completion.tokens_out,
            latency_ms=(time.perf_counter() - started) * 1000,
            worker=self.worker_name,
        )
        final = isinstance(action, FinalAnswer) and stop is None
        answer = action.answer if isinstance(action, FinalAnswer) else None
        committed = self.store.commit_step(
            msg.run_id,
            record,
            final_answer=answer if final else NO_ANSWER,
            failed_reason=stop,
            error_type=error_type,
            new_run=new_run,
        )
        if not committed:
            return (self._stored_outcome(msg) if deferred else None) or StepResult(Outcome.SKIP)
        metrics.step_finished(
            spec.name, kind, record.latency_ms / 1000, record.tokens_in, record.tokens_out
        )
        if msg.stream:
            self.relay.step(msg.run_id, msg.step, kind, record.tool)
        if final:
            self._run_finished(state, SUCCEEDED, None)
            return StepResult(Outcome.DONE, answer=answer)
        if stop is not None:
            assert error_type is not None
            metrics.guardrail_stop(spec.name, error_type)
            self._run_finished(state, FAILED, error_type)
            return StepResult(Outcome.FAILED, reason=stop, error_type=error_type)
        return StepResult(Outcome.NEXT, next_step=msg.step + 1)

    def _run_finished(self, state: RunState, status: str, error_type: str | None) -> None:
        seconds = max(0.0, time.time() - state.created_at.timestamp())
        metrics.run_finished(state.agent, status, error_type, seconds)

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

    def _call_tool(self, spec: AgentSpec, msg: StepMessage, call: ToolCall) -> tuple[str, Any]:
        """Run the tool (or reuse the result of this step's earlier delivery): (kind, result)."""
        if call.tool not in spec.tools:
            metrics.guardrail_stop(spec.name, TOOL_NOT_ALLOWED)
            error = f"tool {call.tool!r} is not allowed for agent {spec.name!r}"
            return "denied", {"error": error}
        cached = self.tool_cache.get(msg.run_id, msg.step)
        if cached is not MISS:
            metrics.tool_call(spec.name, call.tool, cached=True, error=False)
            return "tool", cached
        ctx = ToolContext(run_id=msg.run_id, step=msg.step, agent=spec.name, redis=self.redis)
        try:
            with tracing.span("agentq.tool_call", tool=call.tool):
                result, failed = run_tool(call.tool, call.args, ctx), False
        except ToolError as exc:
            result, failed = {"error": str(exc)}, True
        self.tool_cache.put(msg.run_id, msg.step, result)
        metrics.tool_call(spec.name, call.tool, cached=False, error=failed)
        return "tool", result

    def _fail(
        self,
        msg: StepMessage,
        reason: str,
        error_type: str,
        new_run: NewRun | None = None,
        state: RunState | None = None,
        deferred: bool = False,
    ) -> StepResult:
        """End the run with an error step saying why (nothing else of the step is kept)."""
        record = StepRecord(step=msg.step, kind="error", model_output="", worker=self.worker_name)
        committed = self.store.commit_step(
            msg.run_id, record, failed_reason=reason, error_type=error_type, new_run=new_run
        )
        if not committed and deferred:
            # The run was in the store after all: its outcome is the store's, not this one.
            return self._stored_outcome(msg) or StepResult(Outcome.SKIP)
        if committed and state is not None:
            if error_type == BUDGET_EXCEEDED:
                metrics.guardrail_stop(msg.agent, error_type)
            self._run_finished(state, FAILED, error_type)
        return StepResult(Outcome.FAILED, reason=reason, error_type=error_type)


@dataclass(slots=True)
class _Hold:
    """A step's claim on its run's lease: the token once taken."""

    run_id: str
    ttl_s: float
    token: str | None = None


def _deferred(msg: StepMessage) -> bool:
    """Whether ``msg`` puts off its load and lease (step 0 on its first delivery)."""
    return msg.first and msg.step == 0


@functools.lru_cache(maxsize=256)
def _budget(limits: tuple[tuple[str, Any], ...]) -> Budget:
    """A stored run's :class:`Budget` (frozen, so one per set of limits serves every step)."""
    return Budget(**dict(limits))


def _settled(msg: StepMessage, state: RunState) -> StepResult | None:
    """What a step message does with a run already in the store that it cannot run:
    an ended run reports its end; a step committed before hands the run on; anything older
    or newer is a duplicate. None: the message is the run's next step."""
    if state.status == SUCCEEDED:
        return StepResult(Outcome.DONE, answer=state.answer)
    if state.status == FAILED:
        return StepResult(Outcome.FAILED, reason=state.error, error_type=state.error_type)
    if msg.step != state.next_step:
        if msg.step == state.next_step - 1:
            return StepResult(Outcome.REPUBLISH, next_step=state.next_step)
        return StepResult(Outcome.SKIP)
    return None
