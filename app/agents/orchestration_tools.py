"""The built-in tools that park a run (:mod:`app.agents.waits`): ``delegate`` (sub-agent runs,
fan-out and fan-in), ``wait_for_signal`` (a person's approval, an external event) and ``sleep``
(a durable timer). List them in an agent's ``tools``. What they ask is checked when the step
commits (known agent types, inputs, depth, fan-out, cycles); a request that fails a check is
the call's error, for the model to correct."""

from __future__ import annotations

from typing import Any, Literal

from app.agents.tools import ToolContext, tool
from app.agents.waits import Delegate, Sleep, Task, WaitForSignal, to_json
from app.errors import ToolArgumentsError
from app.memory.records import FailurePolicy, TimeoutPolicy


@tool("delegate", side_effects=True)
def delegate(
    ctx: ToolContext,
    tasks: list[dict[str, Any]],
    on_failure: Literal["fail", "skip", "retry"] = "fail",
    retries: int = 0,
    timeout_s: float | None = None,
    on_timeout: Literal["fail", "continue"] = "fail",
) -> dict[str, Any]:
    """Hand tasks to specialist agents, run in parallel; the result is their answers in order.

    Args:
        tasks: The sub-tasks, each an object {"agent": agent type, "input": its input}.
        on_failure: What a failed sub-task does: fail this run, skip it (its error is its
            result), or retry it (up to `retries` times).
        retries: Tries more for a failed sub-task when on_failure is retry.
        timeout_s: Longest wait for all sub-tasks, in seconds (none: no limit).
        on_timeout: After the timeout: fail this run, or continue with what has ended.
    """
    parsed = []
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("agent"), str):
            raise ToolArgumentsError(f"task #{i} must be an object with an 'agent' (a string)")
        if "input" not in task:
            raise ToolArgumentsError(f"task #{i} has no 'input'")
        parsed.append(Task(task["agent"], task["input"]))
    if not parsed:
        raise ToolArgumentsError("'tasks' must list at least one task")
    if retries < 0:
        raise ToolArgumentsError("'retries' must not be negative")
    wait = Delegate(
        tuple(parsed), FailurePolicy(on_failure), retries, timeout_s, TimeoutPolicy(on_timeout)
    )
    return to_json(wait)


@tool("wait_for_signal")
def wait_for_signal(
    ctx: ToolContext,
    name: str,
    timeout_s: float | None = None,
    on_timeout: Literal["fail", "continue"] = "fail",
) -> dict[str, Any]:
    """Pause this run until a named signal arrives (a person's approval, an external event);
    the result is the signal's data.

    Args:
        name: The signal's name, e.g. "approval".
        timeout_s: Longest wait, in seconds (none: no limit).
        on_timeout: After the timeout: fail this run, or continue (the result says so).
    """
    if not name:
        raise ToolArgumentsError("'name' must not be empty")
    return to_json(WaitForSignal(name, timeout_s, TimeoutPolicy(on_timeout)))


@tool("sleep")
def sleep(ctx: ToolContext, seconds: float) -> dict[str, Any]:
    """Pause this run for a time without holding anything (a durable timer).

    Args:
        seconds: How long to pause.
    """
    if seconds < 0:
        raise ToolArgumentsError("'seconds' must not be negative")
    return to_json(Sleep(seconds))
