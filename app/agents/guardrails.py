"""Guardrails: per-run budgets and pluggable validators of a run's input and final answer.

Pure checks, no I/O. Budgets are declared per agent type (``AgentSpec.budget``, defaults in
``settings.limits``) and a run may tighten them at submit. Validators are declared as data
on the agent type::

    output_validators:
      - {type: json_schema, schema: {type: object, required: [title]}}
      - {type: blocked_patterns, patterns: ["(?i)password"]}

and your own are registered with :func:`validator`.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import ConfigurationError


class Budget(BaseModel):
    """Limits of one run; None means unlimited."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int | None = Field(default=None, gt=0, description="Steps (model calls).")
    max_tokens_in: int | None = Field(
        default=None, gt=0, description="Prompt tokens over all steps."
    )
    max_tokens_out: int | None = Field(
        default=None, gt=0, description="Generated tokens over all steps."
    )
    max_tool_calls: int | None = Field(default=None, ge=0, description="Tool calls.")
    max_wall_time_s: float | None = Field(
        default=None, gt=0, description="Seconds from the run's start to its last step."
    )

    def merged(self, base: Budget) -> Budget:
        """This budget's limits, falling back to ``base`` where this one sets none."""
        mine = self.model_dump(exclude_none=True)
        return Budget(**{**base.model_dump(exclude_none=True), **mine})

    def tightened(self, override: Budget) -> Budget:
        """The tighter of this budget and ``override`` on each limit (a run cannot loosen)."""
        values = {}
        for name in type(self).model_fields:
            a, b = getattr(self, name), getattr(override, name)
            values[name] = b if a is None else a if b is None else min(a, b)
        return Budget(**values)


@dataclass(frozen=True, slots=True)
class Usage:
    """What a run has spent so far, over its committed steps."""

    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tool_calls: int = 0
    wall_time_s: float = 0.0


def check_before_step(budget: Budget, used: Usage, prompt_tokens: int) -> str | None:
    """Why the next model call must not happen, or None: checked before spending anything."""
    if budget.max_steps is not None and used.steps >= budget.max_steps:
        return f"step budget of {budget.max_steps} exhausted without a final answer"
    if budget.max_wall_time_s is not None and used.wall_time_s > budget.max_wall_time_s:
        return (
            f"wall time budget of {budget.max_wall_time_s:g} s exhausted "
            f"({used.wall_time_s:.1f} s since the run started)"
        )
    if budget.max_tokens_in is not None and used.tokens_in + prompt_tokens > budget.max_tokens_in:
        return (
            f"input token budget of {budget.max_tokens_in} would be exceeded "
            f"({used.tokens_in} used, the next prompt has {prompt_tokens})"
        )
    return None


def check_after_call(budget: Budget, used: Usage, tokens_out: int, tool_calls: int) -> str | None:
    """Why the run stops after this model call, which asked for ``tool_calls`` calls (its
    output is kept), or None."""
    if budget.max_tokens_out is not None and used.tokens_out + tokens_out > budget.max_tokens_out:
        return (
            f"output token budget of {budget.max_tokens_out} exceeded "
            f"({used.tokens_out + tokens_out} generated)"
        )
    limit = budget.max_tool_calls
    if tool_calls and limit is not None and used.tool_calls + tool_calls > limit:
        return f"tool call budget of {limit} exhausted ({used.tool_calls} made, {tool_calls} asked)"
    return None


# ---- validators ----

Validator = Callable[[Any], str | None]
"""Checks a value; returns why it is rejected, or None."""

ValidatorFactory = Callable[..., Validator]
VALIDATORS: dict[str, ValidatorFactory] = {}


def validator(name: str) -> Callable[[ValidatorFactory], ValidatorFactory]:
    """Register a validator factory: its keyword arguments come from the agent's declaration."""

    def register(factory: ValidatorFactory) -> ValidatorFactory:
        VALIDATORS[name] = factory
        return factory

    return register


class ValidatorSpec(BaseModel):
    """One validator as declared on an agent type: its registered name and its parameters."""

    model_config = ConfigDict(frozen=True, extra="allow")

    type: str = Field(description="Registered validator name (json_schema, blocked_patterns...).")

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def build_validators(specs: Sequence[ValidatorSpec]) -> list[tuple[str, Validator]]:
    """Instantiate declared validators; an unknown name or bad parameter is a config error."""
    built = []
    for spec in specs:
        factory = VALIDATORS.get(spec.type)
        if factory is None:
            known = ", ".join(sorted(VALIDATORS))
            raise ConfigurationError(f"unknown validator {spec.type!r}; known: {known}")
        try:
            built.append((spec.type, factory(**spec.params())))
        except (TypeError, ValueError, re.error) as exc:
            raise ConfigurationError(f"validator {spec.type!r}: {exc}") from exc
    return built


def first_rejection(validators: Sequence[tuple[str, Validator]], value: Any) -> str | None:
    """The first validator's reason for rejecting ``value``, prefixed with its name; or None."""
    for name, check in validators:
        reason = check(value)
        if reason is not None:
            return f"{name}: {reason}"
    return None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@validator("json_schema")
def json_schema(schema: Mapping[str, Any], parse_strings: bool = True) -> Validator:
    """The value must match a JSON schema; a string answer is parsed as JSON first if it can be."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"invalid schema: {exc.message}") from exc
    checker = Draft202012Validator(schema)

    def check(value: Any) -> str | None:
        if parse_strings and isinstance(value, str):
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(value)
        error = next(iter(checker.iter_errors(value)), None)
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path) or "the value"
        return f"{where} does not match the schema: {error.message}"

    return check


@validator("blocked_patterns")
def blocked_patterns(patterns: Sequence[str]) -> Validator:
    """The value (as JSON text) must not match any of the regular expressions."""
    compiled = [re.compile(p) for p in patterns]

    def check(value: Any) -> str | None:
        text = _as_text(value)
        for pattern in compiled:
            if pattern.search(text):
                return f"matches the blocked pattern {pattern.pattern!r}"
        return None

    return check


@validator("max_length")
def max_length(chars: int) -> Validator:
    """The value, as text, must not be longer than ``chars`` characters."""
    if chars <= 0:
        raise ValueError("chars must be positive")

    def check(value: Any) -> str | None:
        size = len(_as_text(value))
        return f"is {size} characters long; the limit is {chars}" if size > chars else None

    return check
