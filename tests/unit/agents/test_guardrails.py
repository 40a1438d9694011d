"""Budgets and validators: the pure checks a run's guardrails are made of."""

from __future__ import annotations

import pytest

from app.agents.guardrails import (
    Budget,
    Usage,
    ValidatorSpec,
    build_validators,
    check_after_call,
    check_before_step,
    first_rejection,
    validator,
)
from app.agents.registry import AgentRegistry, AgentSpec
from app.config import LimitSettings
from app.errors import ConfigurationError


def test_budget_defaults_come_from_limits_and_the_agent_overrides_them():
    spec = AgentSpec(name="a", max_steps=5, budget=Budget(max_tokens_out=100))
    limits = LimitSettings(max_tokens_out=999, max_tool_calls=3)
    budget = spec.run_budget(limits)
    assert budget.max_steps == 5
    assert budget.max_tokens_out == 100  # the agent's own beats the default
    assert budget.max_tool_calls == 3  # the default fills what the agent leaves unset
    assert budget.max_wall_time_s is None


def test_a_run_can_tighten_but_not_loosen_its_budget():
    spec = AgentSpec(name="a", max_steps=5, budget=Budget(max_tokens_out=100))
    budget = spec.run_budget(LimitSettings(), Budget(max_steps=50, max_tokens_out=10))
    assert budget.max_steps == 5
    assert budget.max_tokens_out == 10


@pytest.mark.parametrize(
    ("budget", "used", "prompt_tokens", "expected"),
    [
        (Budget(max_steps=2), Usage(steps=2), 1, "step budget of 2"),
        (Budget(max_steps=2), Usage(steps=1), 1, None),
        (Budget(max_wall_time_s=1), Usage(wall_time_s=1.5), 1, "wall time budget"),
        (Budget(max_tokens_in=10), Usage(tokens_in=8), 3, "input token budget of 10"),
        (Budget(max_tokens_in=10), Usage(tokens_in=7), 3, None),
        (Budget(), Usage(steps=100, tokens_in=10**6, wall_time_s=10**6), 10**6, None),
    ],
)
def test_check_before_step(budget, used, prompt_tokens, expected):
    reason = check_before_step(budget, used, prompt_tokens)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_check_after_call_counts_output_tokens_and_tool_calls():
    assert "output token budget of 10" in check_after_call(
        Budget(max_tokens_out=10), Usage(tokens_out=6), 5, tool_calls=0
    )
    assert check_after_call(Budget(max_tokens_out=10), Usage(tokens_out=5), 5, 0) is None
    assert "tool call budget of 1" in check_after_call(
        Budget(max_tool_calls=1), Usage(tool_calls=1), 1, tool_calls=1
    )
    # Every call of one reply counts: three asked with two left is over.
    assert check_after_call(Budget(max_tool_calls=3), Usage(tool_calls=1), 1, 2) is None
    assert "(1 made, 3 asked)" in check_after_call(
        Budget(max_tool_calls=3), Usage(tool_calls=1), 1, tool_calls=3
    )
    # A final answer needs no tool call, so an exhausted tool budget does not stop it.
    assert check_after_call(Budget(max_tool_calls=1), Usage(tool_calls=1), 1, 0) is None


def test_json_schema_validator_parses_string_answers():
    checks = build_validators([ValidatorSpec(type="json_schema", schema={"type": "object"})])
    assert first_rejection(checks, '{"a": 1}') is None
    assert first_rejection(checks, {"a": 1}) is None
    reason = first_rejection(checks, "Answer: 42")
    assert reason is not None and reason.startswith("json_schema:")


def test_blocked_patterns_and_max_length():
    checks = build_validators(
        [
            ValidatorSpec(type="blocked_patterns", patterns=["(?i)password"]),
            ValidatorSpec(type="max_length", chars=20),
        ]
    )
    assert first_rejection(checks, "all fine") is None
    assert "blocked pattern" in first_rejection(checks, {"note": "my PASSWORD is x"})
    assert "max_length" in first_rejection(checks, "x" * 21)


def test_custom_validators_register_by_name():
    @validator("no_digits_test")
    def no_digits() -> object:
        return lambda value: "has digits" if any(c.isdigit() for c in str(value)) else None

    registry = AgentRegistry(
        [AgentSpec(name="a", output_validators=(ValidatorSpec(type="no_digits_test"),))]
    )
    assert first_rejection(registry.output_validators("a"), "abc") is None
    assert first_rejection(registry.output_validators("a"), "a1") == "no_digits_test: has digits"


def test_bad_validator_declarations_fail_when_the_registry_loads():
    with pytest.raises(ConfigurationError, match="unknown validator"):
        AgentRegistry([AgentSpec(name="a", input_validators=(ValidatorSpec(type="nope"),))])
    with pytest.raises(ConfigurationError, match="invalid schema"):
        AgentRegistry(
            [
                AgentSpec(
                    name="a",
                    output_validators=(ValidatorSpec(type="json_schema", schema={"type": 5}),),
                )
            ]
        )
    with pytest.raises(ConfigurationError, match="blocked_patterns"):
        AgentRegistry(
            [
                AgentSpec(
                    name="a",
                    input_validators=(ValidatorSpec(type="blocked_patterns", patterns=["("]),),
                )
            ]
        )
