"""A step's decision as a pure function: each branch of :func:`app.tasks.verdict.decide`."""

from __future__ import annotations

from app.agents.guardrails import Budget, Usage, ValidatorSpec, build_validators
from app.inference.chat import ToolCall
from app.memory.records import ErrorType, RunStatus, StepKind
from app.tasks import verdict
from app.tasks.verdict import Verdict

ADD = ToolCall("c0", "calculator", {"expression": "1+1"})
RM = ToolCall("c1", "rm", {})
UNLIMITED, NOTHING_USED = Budget(), Usage()
JSON_OBJECT = build_validators([ValidatorSpec(type="json_schema", schema={"type": "object"})])


def decide(reply, budget=UNLIMITED, used=NOTHING_USED, tokens_out=5, step=0, validators=()):
    """``reply``: the model's text (an answer), or the calls it asked for."""
    text, calls = (reply, ()) if isinstance(reply, str) else ("", reply)
    return verdict.decide(
        text,
        calls,
        budget=budget,
        used=used,
        tokens_out=tokens_out,
        step=step,
        agent="calc",
        tools=("calculator",),
        validators=validators,
    )


def test_a_final_answer_ends_the_run_with_it() -> None:
    assert decide('{"final": {"n": 2}}', validators=JSON_OBJECT) == Verdict(
        StepKind.FINAL, RunStatus.SUCCEEDED, answer={"n": 2}
    )


def test_a_rejected_answer_fails_the_run_and_keeps_no_answer() -> None:
    decided = decide("plain text", validators=JSON_OBJECT)
    assert (decided.kind, decided.status, decided.answer) == (
        StepKind.FINAL, RunStatus.FAILED, None
    )  # fmt: skip
    assert decided.error_type is ErrorType.OUTPUT_REJECTED
    assert decided.reason is not None
    assert decided.reason.startswith("answer rejected by json_schema: the value does not match")


def test_an_allowed_tool_is_called_and_the_run_goes_on() -> None:
    assert decide([ADD], budget=Budget(max_steps=3), step=1) == Verdict(
        StepKind.TOOL, RunStatus.RUNNING, (ADD,), run_tools=True
    )


def test_a_tool_the_agent_may_not_use_is_denied_and_the_run_goes_on() -> None:
    assert decide([RM]) == Verdict(
        StepKind.DENIED,
        calls=(RM,),
        run_tools=True,
        denied={"c1": "tool 'rm' is not allowed for agent 'calc'"},
    )


def test_several_calls_in_one_reply_are_all_made_and_only_the_disallowed_one_denied() -> None:
    decided = decide([ADD, RM, ADD])
    assert (decided.kind, decided.status, decided.calls, decided.run_tools) == (
        StepKind.TOOL, RunStatus.RUNNING, (ADD, RM, ADD), True
    )  # fmt: skip
    assert decided.denied == {"c1": "tool 'rm' is not allowed for agent 'calc'"}


def test_a_tool_call_on_the_last_step_runs_then_fails_the_run() -> None:
    decided = decide([ADD], budget=Budget(max_steps=2), step=1)
    assert (decided.kind, decided.status, decided.run_tools, decided.error_type) == (
        StepKind.TOOL, RunStatus.FAILED, True, ErrorType.BUDGET_EXCEEDED
    )  # fmt: skip
    assert decided.reason == "step budget of 2 exhausted without a final answer"


def test_a_denied_tool_on_the_last_step_fails_the_run_too() -> None:
    decided = decide([RM], budget=Budget(max_steps=1))
    assert (decided.kind, decided.status) == (StepKind.DENIED, RunStatus.FAILED)
    assert decided.denied and decided.error_type is ErrorType.BUDGET_EXCEEDED


def test_a_final_answer_on_the_last_step_still_succeeds() -> None:
    decided = decide('{"final": 4}', budget=Budget(max_steps=1))
    assert (decided.status, decided.answer) == (RunStatus.SUCCEEDED, 4)


def test_output_tokens_over_budget_fail_the_run_before_validators_or_tools() -> None:
    over = Budget(max_tokens_out=10)
    answer = decide("x", budget=over, used=Usage(tokens_out=6), validators=JSON_OBJECT)
    assert answer == Verdict(
        StepKind.FINAL,
        RunStatus.FAILED,
        reason="output token budget of 10 exceeded (11 generated)",
        error_type=ErrorType.BUDGET_EXCEEDED,
    )
    call = decide([ADD], budget=over, used=Usage(tokens_out=6))
    assert (call.kind, call.calls, call.run_tools, call.status) == (
        StepKind.TOOL, (ADD,), False, RunStatus.FAILED
    )  # fmt: skip


def test_a_tool_call_past_the_tool_budget_is_kept_but_not_made() -> None:
    decided = decide([ADD], budget=Budget(max_tool_calls=1), used=Usage(tool_calls=1))
    assert (decided.kind, decided.run_tools, decided.error_type, decided.reason) == (
        StepKind.TOOL,
        False,
        ErrorType.BUDGET_EXCEEDED,
        "tool call budget of 1 exhausted (1 made, 1 asked)",
    )
    # Every call of a reply counts: two asked with one left is over the budget.
    two = decide([ADD, ADD], budget=Budget(max_tool_calls=2), used=Usage(tool_calls=1))
    assert two.reason == "tool call budget of 2 exhausted (1 made, 2 asked)"
    # The tool budget does not apply to an answer.
    answer = decide('{"final": 1}', budget=Budget(max_tool_calls=1), used=Usage(tool_calls=1))
    assert answer.status is RunStatus.SUCCEEDED


def test_before_call_lets_the_model_call_go_within_budget() -> None:
    used = Usage(steps=2, tokens_in=50, wall_time_s=3.0)
    budget = Budget(max_steps=3, max_tokens_in=100, max_wall_time_s=10)
    assert verdict.before_call(budget, used, prompt_tokens=50) is None


def test_before_call_ends_the_run_with_an_error_step() -> None:
    stop = verdict.before_call(Budget(max_steps=2), Usage(steps=2), prompt_tokens=1)
    assert stop == Verdict(
        StepKind.ERROR,
        RunStatus.FAILED,
        reason="step budget of 2 exhausted without a final answer",
        error_type=ErrorType.BUDGET_EXCEEDED,
    )
    over = verdict.before_call(Budget(max_tokens_in=100), Usage(tokens_in=60), prompt_tokens=41)
    assert over is not None and over.reason is not None
    assert over.reason.startswith("input token budget of 100 would be exceeded")
    late = verdict.before_call(Budget(max_wall_time_s=1), Usage(wall_time_s=2.5), prompt_tokens=1)
    assert late is not None and late.error_type is ErrorType.BUDGET_EXCEEDED


def test_failed_is_an_error_step_that_ends_the_run() -> None:
    assert verdict.failed("model call failed: boom", ErrorType.MODEL_ERROR) == Verdict(
        StepKind.ERROR,
        RunStatus.FAILED,
        reason="model call failed: boom",
        error_type=ErrorType.MODEL_ERROR,
    )


def test_enum_values_are_the_strings_stored_and_sent() -> None:
    assert [str(k) for k in StepKind] == ["tool", "denied", "final", "error"]
    assert [str(s) for s in RunStatus] == ["running", "waiting", "succeeded", "failed", "cancelled"]
    assert {e for e in ErrorType if e.guardrail} == {
        ErrorType.BUDGET_EXCEEDED, ErrorType.OUTPUT_REJECTED, ErrorType.TOOL_NOT_ALLOWED
    }  # fmt: skip
