"""One step of an agent run, independent of Celery: lease, load, infer, tool, commit.

The Celery task (:mod:`app.tasks.run_agent`) is a thin shell that turns the
:class:`StepResult` into "publish the next step", "store the answer" or "retry".
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.agents.guardrails import Budget, Usage
from app.agents.prompts import Turn, conversation
from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.sandbox import ToolSandbox
from app.agents.tools import TOOLS, ToolContext, bounded
from app.agents.validation import validate_run
from app.config import Settings
from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelCallCancelledError,
    NoSuchRunError,
    SubmitError,
    ToolError,
)
from app.inference import tokens
from app.inference.backend import (
    ChatRequest,
    GenerationParams,
    InferenceBackend,
    ToolCall,
    ToolSchema,
)
from app.inference.chat import Counted
from app.memory.history import SessionHistory, claim_session
from app.memory.long_term import LazyMemory
from app.memory.records import CallRecord, ErrorType, RunStatus, StepDraft, StepKind, utc_now
from app.memory.response_cache import CACHED_REPLICA, ResponseCache
from app.memory.sessions import NO_ANSWER, NewRun, RunState, SessionStore, StepRecord
from app.memory.tool_cache import ToolCache
from app.memory.waits import CANCELLED_REASON, Effects, Park
from app.ops import metrics, tracing
from app.tasks import parking, verdict
from app.tasks.cancel_watch import CancelWatcher
from app.tasks.leases import HeldLeases, RunLease
from app.tasks.model_calls import ModelCalls
from app.tasks.recall import with_memories
from app.tasks.relay import TokenRelay
from app.tasks.steps import Outcome, StepMessage, StepResult, usage
from app.tasks.verdict import Verdict

__all__ = [
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
        tools: ToolSandbox | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.redis = redis
        self.leases = HeldLeases(RunLease(redis), worker_name)
        self.history = SessionHistory(store, redis, settings.sessions)
        self.relay = TokenRelay(redis, settings.stream)
        self.tools = tools or ToolSandbox.from_settings(settings)  # closed by WorkerRuntime
        self.worker_name = worker_name
        metrics.label_tenants(settings.tenants.labelled)
        self.long_term = LazyMemory(settings, store, redis)  # made on first use
        self.cancels = CancelWatcher(redis)  # aborts a model call whose run is cancelled
        self._budgets: dict[tuple[str, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}
        self._tool_schemas: dict[str, tuple[ToolSchema, ...]] = {}
        self.tool_cache = ToolCache(redis, settings.cache) if settings.cache.tools else None
        self.model = ModelCalls(
            settings, backends, self.relay, ResponseCache(redis, settings.cache),
            tokens.counters(settings),
        )  # fmt: skip

    def run_step(self, msg: StepMessage, *, keep_lease: bool = False) -> StepResult:
        """Execute ``msg`` once under the run's lease, or say why not.

        With ``keep_lease``, a run that is done keeps its lease, named by ``result.lease``:
        the caller gives it back with :meth:`release`, in the round trip that stores the
        answer. Any other outcome (and any error) releases it here.

        Raises :class:`NoSuchRunError` for a later step of a run the store does not have.

        A run's first message on its first delivery takes the lease only before a tool
        call: until then nothing it does has an effect that its commit does not guard (the
        commit creates the run, so of two copies of that message one commits and the other
        reads the outcome), and a new run has nobody else working on it.
        """
        spec = self.registry.get(msg.agent)
        if spec is None:
            reason = f"unknown agent {msg.agent!r} (not in this worker's registry)"
            return StepResult(Outcome.FAILED, reason=reason, error_type=ErrorType.UNKNOWN_AGENT)
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
                self.leases.release(msg.run_id, hold.token)

    def _take(self, hold: _Hold) -> bool:
        """Take the run's lease for this step; False when another worker holds it."""
        hold.token = self.leases.take(hold.run_id, hold.ttl_s)
        return hold.token is not None

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
                # Workers publish a later step only after the run's first commit.
                raise NoSuchRunError(
                    f"no run {msg.run_id!r}: step {msg.step} of a run that was never started"
                    " (later steps are sent by workers only; submit a new run)"
                )
            # Created by the commit of its first step: one write per step, step 0 included.
            parent = msg.parent or {}
            new_run = NewRun(
                msg.run_id, spec.name, msg.input, msg.session_id, self._run_budget(spec, msg),
                tenant=msg.tenant, parent_id=parent.get("run"), lineage=parent.get("lineage"),
            )  # fmt: skip
            state = new_run.state()
        else:
            settled = _settled(msg, state)
            if settled is not None:
                return settled
            if state.cancel_requested_at is not None:  # the step boundary a cancel waits for
                return self._fail(msg, verdict.failed(CANCELLED_REASON, ErrorType.CANCELLED), state)
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
                    tenant=state.tenant,
                )
            except SubmitError as exc:
                refused = verdict.failed(
                    f"run refused: {exc}", ErrorType.INPUT_REJECTED, traceback.format_exc()
                )
                return self._fail(msg, refused, state, new_run, deferred)
            if state.session_id is not None and not state.steps:
                claimed = self._claim_session(spec, msg, state, new_run)
                if isinstance(claimed, StepResult):
                    return claimed
                state, new_run = claimed, None  # the claim created the run
        return self._execute(spec, msg, state, new_run, hold if deferred else None)

    def _claim_session(
        self, spec: AgentSpec, msg: StepMessage, state: RunState, new_run: NewRun | None
    ) -> RunState | StepResult:
        """Make the run its session's running run (creating it): its state then, with the
        session's history version; or, when another run of the session is running, what
        ``sessions.busy`` says: come back later, or fail."""
        run = new_run or NewRun(
            state.id, state.agent, state.input, state.session_id, state.budget, state.created_at,
            state.tenant, state.parent_id, state.lineage,
        )  # fmt: skip
        claim = claim_session(self.store, run)
        if claim.foreign:
            reason = (
                f"run refused: session {state.session_id!r} is not tenant {state.tenant!r}'s "
                "(a session belongs to the tenant whose run started it; use another session id)"
            )
            refused = verdict.failed(reason, ErrorType.FOREIGN_SESSION)
            # Stored without the session: it is none of this run's, nor this run any of its.
            alone = replace(new_run, session_id=None) if new_run is not None else None
            return self._fail(msg, refused, replace(state, session_id=None), alone)
        if claim.held_by(run.id):
            started = claim.started_at or state.created_at
            return replace(state, history_version=claim.history_version, created_at=started)
        busy = self.settings.sessions.busy
        metrics.session_busy(spec.name, busy)
        if busy == "requeue":
            return StepResult(Outcome.SESSION_BUSY)
        reason = (
            f"session {state.session_id!r} is busy: its run {claim.holder!r} is running "
            "(runs of a session go one at a time; AGENTQ_SESSIONS__BUSY=requeue waits instead)"
        )
        return self._fail(msg, verdict.failed(reason, ErrorType.SESSION_BUSY), state, new_run)

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
        budget = (
            _budget(tuple(state.budget.items()))
            if state.budget
            else spec.run_budget(self.settings.limits)
        )
        used = usage(state, time.time())
        started = time.perf_counter()
        reply = state.draft  # the model answered an earlier delivery: its reply stands
        counted: Counted = "estimate"
        if reply is None:
            request = self._request(spec, state)
            stop = verdict.before_call(
                budget, used, self.model.prompt_tokens(spec, request, budget)
            )
            if stop is not None:
                return self._fail(msg, stop, state, new_run, deferred)
            try:
                with self.cancels.watch(msg.run_id) as cancel:
                    completion = self.model.reply(spec, msg, request, state.session_id, cancel)
            except ModelCallCancelledError:
                stop = verdict.failed(CANCELLED_REASON, ErrorType.CANCELLED)
                return self._fail(msg, stop, state, new_run, deferred)
            except InferenceUnavailableError:
                raise  # the task retries the step later; nothing was committed
            except InferenceError as exc:
                broken = verdict.failed(
                    f"model call failed: {exc}", ErrorType.MODEL_ERROR, traceback.format_exc()
                )
                return self._fail(msg, broken, state, new_run, deferred)
            reply = StepDraft(
                step=msg.step,
                model_output=completion.text,
                calls=tuple(c.to_json() for c in _numbered(completion.tool_calls, msg.step)),
                tokens_in=completion.tokens_in,
                tokens_out=completion.tokens_out,
                latency_ms=(time.perf_counter() - started) * 1000,
                replica=completion.replica,
            )
            counted = completion.counted
        drafted = state.draft is not None
        if drafted:
            counted = self.model.kept_counted(spec)
        step = _Step(
            spec, msg, state, new_run, deferred, reply, drafted, fresh=not drafted, counted=counted
        )
        return self._act(step, budget, used, unleased, started)

    def _act(
        self,
        step: _Step,
        budget: Budget,
        used: Usage,
        unleased: _Hold | None,
        started: float,
    ) -> StepResult:
        """Decide on the model's reply, make its tool calls (only those without a kept
        result), commit."""
        spec, msg, reply = step.spec, step.msg, step.reply
        decided = verdict.decide(
            reply.model_output,
            [ToolCall.from_json(c) for c in reply.calls],
            budget=budget,
            used=used,
            tokens_out=reply.tokens_out,
            step=msg.step,
            agent=spec.name,
            tools=(*spec.tools, *(t.name for t in self.tools.mcp_schemas(spec.mcp_servers))),
            validators=self.registry.output_validators(spec.name),
        )
        calls = tuple(CallRecord(c.id, c.name, c.args) for c in decided.calls)  # not made
        if decided.run_tools:
            if unleased is not None:
                early = self._lease_for_tool(msg, unleased)
                if early is not None:
                    return early
            if not step.drafted:
                # Kept before the first call: a delivery after a crash makes only the calls
                # that have no result yet, and asks the model nothing.
                kept = self.store.save_draft(msg.run_id, reply, step.new_run)
                if kept is not reply:  # an earlier delivery's reply got there first
                    step = replace(step, new_run=None, drafted=True, reply=kept, fresh=False)
                    return self._act(step, budget, used, None, started)
                step = replace(step, new_run=None, drafted=True)
            calls = self._make_calls(spec, msg, decided, reply)
            calls, park = parking.plan(
                self.registry, self.settings, spec, msg, step.state, calls, budget, used,
                utc_now(),
            )  # fmt: skip
            if park is not None:
                step = replace(step, park=park)
        record = StepRecord(
            step=msg.step,
            kind=decided.kind,
            model_output=reply.model_output,
            tool_calls=calls,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
            # The model call and the calls made now; an earlier delivery's model call counts.
            latency_ms=(time.perf_counter() - started) * 1000
            + (0.0 if step.fresh else reply.latency_ms),
            worker=self.worker_name,
            replica=reply.replica,
        )
        return self._commit(step, decided, record)

    def _request(self, spec: AgentSpec, state: RunState) -> ChatRequest:
        """The step's model call: the run's turns so far after its session's earlier runs,
        the agent's tools and model."""
        history = self.history.of(state)
        turns = [
            Turn(s.model_output, tuple((_call_of(c), c.result) for c in s.tool_calls))
            for s in state.steps
        ]
        params = GenerationParams(
            max_tokens=spec.max_tokens or self.settings.triton.max_tokens,
            temperature=spec.temperature,
        )
        system = spec.system_prompt
        if spec.memory.recall:
            system = with_memories(
                self.long_term, spec, state, lambda text: self.model.text_tokens(spec, text)
            )
        messages = conversation(system, state.input, turns, history)
        tools = self._tools_of(spec)
        choice = spec.tool_choice_at(len(turns))
        return ChatRequest(messages, params, tools, spec.model, tool_choice=choice)

    def _tools_of(self, spec: AgentSpec) -> tuple[ToolSchema, ...]:
        """The tools ``spec`` may call as its model is told of them (made once per agent)."""
        schemas = self._tool_schemas.get(spec.name)
        if schemas is None:
            schemas = tuple(TOOLS[name].schema() for name in spec.tools if name in TOOLS)
            self._tool_schemas[spec.name] = schemas
        # Not kept: a server reached after start lists its tools then.
        return schemas + self.tools.mcp_schemas(spec.mcp_servers)

    def _lease_for_tool(self, msg: StepMessage, unleased: _Hold) -> StepResult | None:
        """Take the lease a deferred step needs before its tool call; the step's result
        instead when a copy of this message holds the run or has committed the step."""
        if not self._take(unleased):
            return StepResult(Outcome.BUSY)
        # A duplicate: the tool's effect belongs to the first one.
        return self._stored_outcome(msg)

    def _commit(self, step: _Step, decided: Verdict, record: StepRecord) -> StepResult:
        """Commit the step as ``decided``, report it, and say what the task does next."""
        msg, agent = step.msg, step.spec.name
        moved: list[int] = []  # the session's history version after a run that succeeds
        effects = Effects()
        committed = self.store.commit_step(
            msg.run_id,
            record,
            final_answer=decided.answer if decided.status is RunStatus.SUCCEEDED else NO_ANSWER,
            failed_reason=decided.reason,
            error_type=decided.error_type,
            new_run=step.new_run,
            drafted=step.drafted,
            session_id=step.state.session_id,
            history=moved,
            park=step.park,
            parent_id=step.state.parent_id,
            effects=effects,
        )
        if moved:
            self.history.add(step.state, moved[0], decided.answer)
        if not committed:
            stored = self._stored_outcome(msg) if step.deferred else None
            return stored or StepResult(Outcome.SKIP)
        # A reply from the response cache sent and generated no tokens: the step keeps its
        # counts (budgets see the same run either way), the token metrics do not.
        spent = record.replica != CACHED_REPLICA
        metrics.step_finished(
            agent,
            record.kind,
            record.latency_ms / 1000,
            record.tokens_in if spent else 0,
            record.tokens_out if spent else 0,
            step.counted,
            step.state.tenant,
        )
        if msg.stream:
            self.relay.step(msg.tenant, msg.run_id, msg.step, record.kind, record.tools)
            if step.park is not None:
                self.relay.waiting(msg.tenant, msg.run_id, msg.step, _parked_on(step.park))
        if msg.stream_to:  # a sub-agent run of a streamed run: shown in the root's stream
            shown = {"run_id": msg.run_id, "agent": agent, "kind": record.kind,
                     "tools": record.tools}  # fmt: skip
            self.relay.child(msg.tenant, msg.stream_to, msg.step, shown)
        if step.park is not None:
            metrics.run_parked(agent, step.park.kind, len(step.park.children))
            return StepResult(Outcome.PARKED, kind=record.kind, tools=tuple(record.tools),
                              effects=effects)  # fmt: skip
        return replace(self._outcome(agent, msg, step.state, decided), effects=effects or None)

    def _outcome(
        self, agent: str, msg: StepMessage, state: RunState, decided: Verdict
    ) -> StepResult:
        """The result of a committed step; a run that ends is counted."""
        if decided.status is RunStatus.RUNNING:
            tools = tuple(call.name for call in decided.calls)
            return StepResult(Outcome.NEXT, next_step=msg.step + 1, kind=decided.kind, tools=tools)
        if decided.error_type is not None and decided.error_type.guardrail:
            metrics.guardrail_stop(agent, decided.error_type)
        seconds = max(0.0, time.time() - state.created_at.timestamp())
        metrics.run_finished(state.agent, decided.status, decided.error_type, seconds, state.tenant)
        if decided.status is RunStatus.SUCCEEDED:
            return StepResult(Outcome.DONE, answer=decided.answer)
        return StepResult(Outcome.FAILED, reason=decided.reason, error_type=decided.error_type)

    def _make_calls(
        self, spec: AgentSpec, msg: StepMessage, decided: Verdict, reply: StepDraft
    ) -> tuple[CallRecord, ...]:
        """Every call of the reply with its result: one kept by an earlier delivery of this
        step, or made now (and kept at once), in the order the model asked for them."""
        made = []
        for call in decided.calls:
            kept = reply.results.get(call.id)
            if kept is not None:
                result, error = kept
                metrics.tool_call(spec.name, call.name, cached=True, error=error)
            else:
                result, error = self._call_tool(spec, msg, decided, call)
            made.append(CallRecord(call.id, call.name, call.args, result, error))
        return tuple(made)

    def _call_tool(
        self, spec: AgentSpec, msg: StepMessage, decided: Verdict, call: ToolCall
    ) -> tuple[Any, bool]:
        """One call's result and whether it is an error: the refusal of a denied call, the
        error of arguments that are no JSON object, or what the tool returned (or raised)."""
        denied = decided.denied.get(call.id)
        if denied is not None:
            metrics.guardrail_stop(spec.name, ErrorType.TOOL_NOT_ALLOWED)
            return {"error": denied}, True
        if call.error is not None:
            metrics.tool_call(spec.name, call.name, cached=False, error=True)
            return {"error": f"invalid arguments for tool {call.name!r}: {call.error}"}, True
        ctx = ToolContext(
            run_id=msg.run_id, step=msg.step, agent=spec.name, redis=self.redis, call_id=call.id,
            tenant=msg.tenant, session_id=msg.session_id, memory=self.long_term,
        )  # fmt: skip
        try:
            with tracing.span("agentq.tool_call", tool=call.name):
                result, failed = self._tool_result(call, ctx), False
        except ToolError as exc:
            result, failed = {"error": str(exc)}, True
        kept = bounded(result, self.settings.limits.tool_result_max_bytes)
        result, failed = kept, failed or kept is not result
        self.store.keep_result(msg.run_id, msg.step, call.id, result, error=failed)
        metrics.tool_call(spec.name, call.name, cached=False, error=failed)
        return result, failed

    def _tool_result(self, call: ToolCall, ctx: ToolContext) -> Any:
        """The call's result: through the tool cache for a deterministic tool (not an MCP
        server's), else made by the sandbox."""
        spec, cache = TOOLS.get(call.name), self.tool_cache
        if cache is None or spec is None or not spec.deterministic or self.tools.is_mcp(call.name):
            return self.tools.call(call.name, call.args, ctx)
        deadline_s = spec.deadline_s or self.settings.limits.tool_timeout_s
        if spec.cpu_heavy:  # it may wait its deadline for a tool process, then run as long
            deadline_s *= 2
        return cache.call(
            spec,
            spec.validate(call.args),
            deadline_s,
            lambda: self.tools.call(call.name, call.args, ctx),
            ctx.tenant,
        )

    def _fail(
        self,
        msg: StepMessage,
        decided: Verdict,
        state: RunState,
        new_run: NewRun | None = None,
        deferred: bool = False,
    ) -> StepResult:
        """End the run with an error step saying why (nothing else of the step is kept)."""
        record = StepRecord(
            step=msg.step, kind=StepKind.ERROR, model_output="", worker=self.worker_name
        )
        effects = Effects()
        committed = self.store.commit_step(
            msg.run_id,
            record,
            failed_reason=decided.reason,
            error_type=decided.error_type,
            new_run=new_run,
            traceback=decided.traceback,
            parent_id=state.parent_id,
            effects=effects,
        )
        if committed:
            outcome = self._outcome(msg.agent, msg, state, decided)
            return replace(outcome, effects=effects or None)
        if deferred:
            # The run was in the store after all: its outcome is the store's, not this one.
            return self._stored_outcome(msg) or StepResult(Outcome.SKIP)
        return StepResult(Outcome.FAILED, reason=decided.reason, error_type=decided.error_type)


@dataclass(frozen=True, slots=True)
class _Step:
    """A step under way once the model has replied (or its earlier reply was found)."""

    spec: AgentSpec
    msg: StepMessage
    state: RunState
    new_run: NewRun | None  # the run is not stored yet: the commit (or the draft) creates it
    deferred: bool  # a first delivery whose load was put off
    reply: StepDraft
    drafted: bool  # the reply is kept as the step's draft
    fresh: bool  # the reply is this delivery's (not an earlier one's draft)
    counted: Counted = "estimate"  # how the reply's tokens were counted
    park: Park | None = None  # what the run waits on once the step commits


def _parked_on(park: Park) -> dict[str, Any]:
    """What a streamed run's ``waiting`` event says it waits for."""
    return {
        "kind": park.kind,
        "name": park.name,
        "children": [child.run_id for child in park.children],
        "due_at": park.due_at.isoformat() if park.due_at else None,
    }


def _numbered(calls: tuple[ToolCall, ...], step: int) -> tuple[ToolCall, ...]:
    """``calls`` with ids that are set and unique within the reply (a server's own ids kept)."""
    seen: set[str] = set()
    named = []
    for i, call in enumerate(calls):
        if not call.id or call.id in seen:
            call = replace(call, id=f"call_{step}_{i}")
        seen.add(call.id)
        named.append(call)
    return tuple(named)


def _call_of(record: CallRecord) -> ToolCall:
    """A stored call as the conversation shows it again."""
    args = record.args if isinstance(record.args, dict) else {}
    return ToolCall(record.id, record.name, args)


@dataclass(slots=True)
class _Hold:
    """A step's claim on its run's lease: the token once taken."""

    run_id: str
    ttl_s: float
    token: str | None = None


def _deferred(msg: StepMessage) -> bool:
    """Whether ``msg`` puts off its load and lease (step 0 on its first delivery)."""
    # A run with a session claims it first: that write creates the run.
    return msg.first and msg.step == 0 and msg.session_id is None


@functools.lru_cache(maxsize=256)
def _budget(limits: tuple[tuple[str, Any], ...]) -> Budget:
    """A stored run's :class:`Budget` (frozen, so one per set of limits serves every step)."""
    return Budget(**dict(limits))


def _settled(msg: StepMessage, state: RunState) -> StepResult | None:
    """What a step message does with a run already in the store that it cannot run:
    an ended run reports its end; a step committed before hands the run on; anything older
    or newer is a duplicate. None: the message is the run's next step."""
    if state.status == RunStatus.SUCCEEDED:
        return StepResult(Outcome.DONE, answer=state.answer)
    if state.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        return StepResult(Outcome.FAILED, reason=state.error, error_type=state.error_type)
    if state.status == RunStatus.WAITING:
        # Parked: only its wait's end publishes its next step; this is a copy of an older one.
        return StepResult(Outcome.SKIP)
    if msg.step != state.next_step:
        if msg.step == state.next_step - 1:
            return StepResult(Outcome.REPUBLISH, next_step=state.next_step)
        return StepResult(Outcome.SKIP)
    return None
