"""A step whose tools asked to wait: what it parks its run on (:class:`~app.memory.waits.Park`),
checked before the commit. Sub-agent runs are checked as a submit checks a run (known agent
type, valid input), against the depth and fan-out limits and for cycles, and inherit what is
left of the run's budget; a request that fails a check becomes its call's error (the model
sees it and may try otherwise), and the step then parks on what is left, if anything.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from app.agents.guardrails import Budget, Usage
from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.validation import validate_run
from app.agents.waits import Delegate, Sleep, Wait, WaitForSignal, from_json
from app.celery_ext.envelope import new_id
from app.config import Settings
from app.errors import SubmitError
from app.memory.records import CallRecord, RunState, WaitKind
from app.memory.waits import Child, Park, due_at
from app.tasks.steps import StepMessage


def waits_of(calls: tuple[CallRecord, ...]) -> list[tuple[CallRecord, Wait]]:
    """The calls of a step whose result is a wait, with it."""
    found = []
    for call in calls:
        wait = None if call.error else from_json(call.result)
        if wait is not None:
            found.append((call, wait))
    return found


def plan(
    registry: AgentRegistry,
    settings: Settings,
    spec: AgentSpec,
    msg: StepMessage,
    state: RunState,
    calls: tuple[CallRecord, ...],
    budget: Budget,
    used: Usage,
    now: datetime,
) -> tuple[tuple[CallRecord, ...], Park | None]:
    """The step's calls (those refused now carry their error) and what it parks on (None: it
    does not park)."""
    asked = waits_of(calls)
    if not asked:
        return calls, None
    refused: dict[str, str] = {}
    children: list[Child] = []
    lineage = [*(state.lineage or []), spec.name]
    limits = settings.orchestration
    kind = WaitKind.CHILDREN if isinstance(asked[0][1], Delegate) else None
    single: tuple[CallRecord, WaitForSignal | Sleep] | None = None
    delegates: list[tuple[CallRecord, Delegate]] = []
    for call, wait in asked:
        if isinstance(wait, Delegate):
            if kind is not WaitKind.CHILDREN:
                refused[call.id] = "one kind of wait per step: this step already waits"
            else:
                delegates.append((call, wait))
        elif single is None and kind is None:
            single = (call, wait)
            kind = WaitKind.SIGNAL if isinstance(wait, WaitForSignal) else WaitKind.TIMER
        else:
            refused[call.id] = "one kind of wait per step: this step already waits"
    timeout: float | None = None
    on_timeout = None
    if delegates:
        total = sum(len(d.tasks) for _, d in delegates)
        why = _delegation_refused(spec, lineage, limits.max_depth, total, limits.max_fan_out)
        for call, wait in delegates:
            reason = why or _cycle(wait, lineage)
            made = (
                reason
                if reason is not None
                else _children(registry, settings, msg, state, call, wait, budget, used, lineage)
            )
            if isinstance(made, str):
                refused[call.id] = made
                continue
            children += made
            if wait.timeout_s is not None and (timeout is None or wait.timeout_s < timeout):
                timeout, on_timeout = wait.timeout_s, wait.on_timeout
    calls = tuple(
        replace(c, result={"error": refused[c.id]}, error=True) if c.id in refused else c
        for c in calls
    )
    message = msg.next_kwargs(msg.step + 1)
    if kind is WaitKind.CHILDREN:
        if not children:
            return calls, None
        first = next(c for c, _ in delegates if c.id not in refused)
        wait_on = Park(
            WaitKind.CHILDREN,
            first.id,
            message,
            None,
            due_at(now, timeout),
            on_timeout or delegates[0][1].on_timeout,
            tuple(children),
        )
        return calls, wait_on
    assert single is not None
    call, wait = single
    if isinstance(wait, Sleep):
        return calls, Park(WaitKind.TIMER, call.id, message, due_at=due_at(now, wait.seconds))
    return calls, Park(
        WaitKind.SIGNAL, call.id, message, wait.name, due_at(now, wait.timeout_s), wait.on_timeout
    )


def _delegation_refused(
    spec: AgentSpec, lineage: list[str], max_depth: int, total: int, max_fan_out: int
) -> str | None:
    if len(lineage) > max_depth:
        return (
            f"cannot delegate: this run is {len(lineage) - 1} level(s) below the run a producer "
            f"started, and sub-agent runs may go {max_depth} deep (orchestration.max_depth)"
        )
    if total > max_fan_out:
        return (
            f"cannot delegate {total} tasks in one step: at most {max_fan_out} "
            "(orchestration.max_fan_out); split them over steps"
        )
    return None


def _cycle(wait: Delegate, lineage: list[str]) -> str | None:
    looped = sorted({t.agent for t in wait.tasks} & set(lineage))
    if looped:
        chain = " -> ".join(lineage)
        return (
            f"cannot delegate to {', '.join(looped)}: already in this run's chain ({chain}); "
            "a sub-agent run may not start an agent type it descends from"
        )
    return None


def _children(
    registry: AgentRegistry,
    settings: Settings,
    msg: StepMessage,
    state: RunState,
    call: CallRecord,
    wait: Delegate,
    budget: Budget,
    used: Usage,
    lineage: list[str],
) -> list[Child] | str:
    """The sub-agent runs of one delegate call, or why it is refused."""
    inherited = remaining(budget, used)
    made = []
    for position, task in enumerate(wait.tasks):
        limits = inherited
        try:
            if task.budget:
                own = Budget(**task.budget)
                tight = own.tightened(Budget(**inherited)) if inherited else own
                limits = tight.model_dump(exclude_none=True)
            req = validate_run(
                registry,
                settings,
                task.agent,
                task.input,
                None,
                new_id(),
                False,
                limits or None,
                tenant=state.tenant,
            )
        except (SubmitError, TypeError, ValueError) as exc:
            return f"task #{position} ({task.agent!r}) refused: {exc}"
        kwargs = req.kwargs()
        kwargs["parent"] = {
            "run": msg.run_id,
            "lineage": lineage,
            # A streamed run's stream shows its sub-agent runs' steps (the root's stream).
            **({"stream": msg.stream_to or msg.run_id} if msg.stream else {}),
        }
        made.append(
            Child(
                req.run_id,
                req.agent,
                req.input,
                kwargs,
                call.id,
                position,
                wait.on_failure,
                wait.retries,
            )
        )
    return made


def remaining(budget: Budget, used: Usage) -> dict[str, Any]:
    """What is left of ``budget`` once ``used`` is spent: the limits a sub-agent run inherits
    (at least 1 of each, so a limit reached is still a limit)."""
    left: dict[str, Any] = {}
    if budget.max_tokens_in is not None:
        left["max_tokens_in"] = max(1, budget.max_tokens_in - used.tokens_in)
    if budget.max_tokens_out is not None:
        left["max_tokens_out"] = max(1, budget.max_tokens_out - used.tokens_out)
    if budget.max_tool_calls is not None:
        left["max_tool_calls"] = max(0, budget.max_tool_calls - used.tool_calls)
    if budget.max_wall_time_s is not None:
        left["max_wall_time_s"] = max(1.0, budget.max_wall_time_s - used.wall_time_s)
    return left
