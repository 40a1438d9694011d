"""A step's decision, apart from its I/O: what the step commits and whether the run ends.

Pure functions of the model's action, the run's budget and usage, the agent's tools and
output validators and the step's index; :class:`app.tasks.runner.StepRunner` does the rest
(lease, load, model and tool calls, commit, metrics, tracing, token relay).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.agents.guardrails import (
    Budget,
    Usage,
    Validator,
    check_after_call,
    check_before_step,
    first_rejection,
)
from app.agents.prompts import answer_of
from app.inference.chat import ToolCall
from app.memory.records import ErrorType, RunStatus, StepKind


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a step commits, and how the run goes on."""

    kind: StepKind
    status: RunStatus = RunStatus.RUNNING  # SUCCEEDED or FAILED: the run ends with this step
    calls: tuple[ToolCall, ...] = ()  # the tool calls the model asked for (recorded in the step)
    run_tools: bool = False  # make the calls before committing
    denied: dict[str, str] = field(default_factory=dict)  # call id -> why its agent may not
    answer: Any = None  # SUCCEEDED: the run's answer
    reason: str | None = None  # FAILED: why
    error_type: ErrorType | None = None  # FAILED: why, as a type
    traceback: str | None = None  # FAILED by an error raised: its traceback


def failed(reason: str, error_type: ErrorType, traceback: str | None = None) -> Verdict:
    """The run ends with an error step that keeps no model output (``traceback``: of the
    error it ends with); a cancellation ends it ``cancelled``."""
    return Verdict(
        StepKind.ERROR,
        RunStatus.CANCELLED if error_type is ErrorType.CANCELLED else RunStatus.FAILED,
        reason=reason,
        error_type=error_type,
        traceback=traceback,
    )


def before_call(budget: Budget, used: Usage, prompt_tokens: int) -> Verdict | None:
    """A verdict that ends the run before its next model call, or None: the call may go."""
    reason = check_before_step(budget, used, prompt_tokens)
    return None if reason is None else failed(reason, ErrorType.BUDGET_EXCEEDED)


def decide(
    text: str,
    calls: Sequence[ToolCall],
    *,
    budget: Budget,
    used: Usage,
    tokens_out: int,
    step: int,
    agent: str,
    tools: Collection[str],
    validators: Sequence[tuple[str, Validator]],
) -> Verdict:
    """The verdict on step ``step`` of a run of ``agent`` once the model replied ``text`` and
    ``calls`` with ``tokens_out`` tokens; ``used``: what the run's earlier steps spent. A reply
    without calls is the run's answer."""
    asked = tuple(calls)
    stop = check_after_call(budget, used, tokens_out, len(asked))
    if stop is not None:  # the output is kept; the tools asked for are not called
        kind = StepKind.TOOL if asked else StepKind.FINAL
        return Verdict(
            kind, RunStatus.FAILED, asked, reason=stop, error_type=ErrorType.BUDGET_EXCEEDED
        )
    if not asked:
        answer = answer_of(text)
        rejection = first_rejection(validators, answer)
        if rejection is not None:
            reason = f"answer rejected by {rejection}"
            return Verdict(
                StepKind.FINAL,
                RunStatus.FAILED,
                reason=reason,
                error_type=ErrorType.OUTPUT_REJECTED,
            )
        return Verdict(StepKind.FINAL, RunStatus.SUCCEEDED, answer=answer)
    denied = {
        call.id: f"tool {call.name!r} is not allowed for agent {agent!r}"
        for call in asked
        if call.name not in tools
    }
    kind = StepKind.DENIED if len(denied) == len(asked) else StepKind.TOOL
    if budget.max_steps is not None and step + 1 >= budget.max_steps:
        # The tools still run (their results are kept), but no step is left to read them.
        reason = f"step budget of {budget.max_steps} exhausted without a final answer"
        return Verdict(
            kind,
            RunStatus.FAILED,
            asked,
            run_tools=True,
            denied=denied,
            reason=reason,
            error_type=ErrorType.BUDGET_EXCEEDED,
        )
    return Verdict(kind, calls=asked, run_tools=True, denied=denied)
