"""Durable waits a tool can park its run on: sub-agent runs (:class:`Delegate`), a named signal
(:class:`WaitForSignal`), a time (:class:`Sleep`).

A tool returns one of them instead of a result; the step commits with the run parked, and the
call's result is filled in when the wait ends (the sub-agents' answers, the signal's payload,
the time). The run holds no worker thread and no message meanwhile. The built-in tools
``delegate``, ``wait_for_signal`` and ``sleep`` return them; a tool of your own can too::

    @tool
    def ask_approval(ctx: ToolContext, amount: float) -> Any:
        '''Ask a person to approve a payment.'''
        notify_approvers(ctx.run_id, amount)       # agentq signal RUN approval --data '{...}'
        return ctx.wait_for_signal("approval", timeout_s=86_400)

Kept tool results are JSON, so a wait travels as ``{"$agentq_wait": {...}}``
(:func:`to_json`, :func:`from_json`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.memory.records import FailurePolicy, TimeoutPolicy

WAIT_KEY = "$agentq_wait"


@dataclass(frozen=True, slots=True)
class Task:
    """One sub-agent run to start: an agent type and its input (``budget`` tightens what it
    inherits from the delegating run's remaining budget)."""

    agent: str
    input: Any
    budget: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Delegate:
    """Start ``tasks`` as sub-agent runs (fan-out) and go on when all have ended (fan-in):
    the call's result is their answers (or errors), in order.

    ``on_failure``: ``fail`` (the run fails, the others are cancelled), ``skip`` (the failed
    one's error is its result), ``retry`` (started again up to ``retries`` times, then as
    ``fail``). ``timeout_s``: the longest wait; then ``on_timeout`` ``fail`` (the run fails) or
    ``continue`` (the unfinished ones are cancelled and reported as such)."""

    tasks: tuple[Task, ...]
    on_failure: FailurePolicy = FailurePolicy.FAIL
    retries: int = 0
    timeout_s: float | None = None
    on_timeout: TimeoutPolicy = TimeoutPolicy.FAIL


@dataclass(frozen=True, slots=True)
class WaitForSignal:
    """Wait for the signal ``name`` (``agentq signal RUN NAME --data JSON``, HTTP, or
    :func:`app.signal`); the call's result is ``{"signal": name, "data": payload}``. After
    ``timeout_s``: ``on_timeout`` ``fail`` or ``continue`` (result ``{"timed_out": true}``)."""

    name: str
    timeout_s: float | None = None
    on_timeout: TimeoutPolicy = TimeoutPolicy.FAIL


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds`` (a durable timer: the run holds nothing meanwhile)."""

    seconds: float


Wait = Delegate | WaitForSignal | Sleep


def to_json(wait: Wait) -> dict[str, Any]:
    """``wait`` as a kept tool result."""
    if isinstance(wait, Delegate):
        body: dict[str, Any] = {
            "kind": "delegate",
            "tasks": [
                {"agent": t.agent, "input": t.input, **({"budget": t.budget} if t.budget else {})}
                for t in wait.tasks
            ],
            "on_failure": str(wait.on_failure),
            "retries": wait.retries,
            "timeout_s": wait.timeout_s,
            "on_timeout": str(wait.on_timeout),
        }
    elif isinstance(wait, WaitForSignal):
        body = {
            "kind": "signal",
            "name": wait.name,
            "timeout_s": wait.timeout_s,
            "on_timeout": str(wait.on_timeout),
        }
    else:
        body = {"kind": "sleep", "seconds": wait.seconds}
    return {WAIT_KEY: body}


def from_json(value: Any) -> Wait | None:
    """The wait a kept tool result holds; None when it is an ordinary result."""
    if not isinstance(value, dict) or set(value) != {WAIT_KEY}:
        return None
    body = value[WAIT_KEY]
    kind = body.get("kind")
    if kind == "delegate":
        return Delegate(
            tuple(Task(t["agent"], t["input"], t.get("budget")) for t in body["tasks"]),
            FailurePolicy(body["on_failure"]),
            int(body["retries"]),
            body.get("timeout_s"),
            TimeoutPolicy(body["on_timeout"]),
        )
    if kind == "signal":
        return WaitForSignal(body["name"], body.get("timeout_s"), TimeoutPolicy(body["on_timeout"]))
    if kind == "sleep":
        return Sleep(float(body["seconds"]))
    return None
