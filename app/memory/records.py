"""What the session store keeps: a run's row, its steps, and a run not yet stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"


class _NoAnswer:
    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Final = _NoAnswer()
"""Default of ``commit_step(final_answer=...)``: the step is not final (None is a valid answer)."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One committed step: the model's output and the tool it called, if any."""

    step: int
    kind: str  # "tool" | "final" | "error"
    model_output: str
    tool: str | None = None
    tool_args: Any = None
    tool_result: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    worker: str | None = None
    created_at: datetime | None = None  # set by the store on commit


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row: its status and where it stands, without its steps."""

    id: str
    session_id: str | None
    agent: str
    input: Any
    status: str  # "running" | "succeeded" | "failed"
    next_step: int
    answer: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    error_type: str | None = (
        None  # why a failed run ended (see app.agents.guardrails, app.tasks.dead_letters)
    )
    budget: dict[str, Any] | None = None  # the run's limits (app.agents.guardrails.Budget)


@dataclass(frozen=True, slots=True)
class RunState(RunRecord):
    """A run with its committed steps, ordered by step index."""

    steps: list[StepRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run not yet in the store: the commit of its first step creates it, in one transaction.

    So a run's step 0 costs one write, not two; a worker lost before that commit leaves
    nothing behind, and the redelivered message starts the run afresh.
    """

    id: str
    agent: str
    input: Any
    session_id: str | None = None
    budget: dict[str, Any] | None = None
    # When its first step started (not when that step commits): wall-time budgets count it.
    created_at: datetime = field(default_factory=lambda: utc_now())

    def state(self) -> RunState:
        """The run as it stands before its first step."""
        return RunState(
            self.id,
            self.session_id,
            self.agent,
            self.input,
            RUNNING,
            0,
            None,
            None,
            self.created_at,
            None,
            budget=self.budget,
        )


def utc_now() -> datetime:
    return datetime.now(UTC)
