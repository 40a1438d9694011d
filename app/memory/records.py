"""What the session store keeps: a run's row, its steps, and a run not yet stored.

The enums below are the values the store's columns allow (``app.memory.schema`` derives its
CHECK constraints from them); their values are the strings stored, sent and used as metric
labels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from app.constants import DEFAULT_TENANT


class RunStatus(enum.StrEnum):
    """Where a run stands (``runs.status``)."""

    RUNNING = "running"
    WAITING = "waiting"  # parked: on sub-agents, a signal or a timer; no message, no worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Whether the run is over (succeeded, failed or cancelled)."""
        return self in _ENDED


class StepKind(enum.StrEnum):
    """What a committed step did (``steps.kind``)."""

    TOOL = "tool"  # the model asked for a tool (called, or stopped by a budget first)
    DENIED = "denied"  # the model asked for a tool its agent may not use; the run goes on
    FINAL = "final"  # the model gave an answer (accepted, or rejected by a validator)
    ERROR = "error"  # no model output kept: the run ended before or at the model call


class WaitKind(enum.StrEnum):
    """What a parked run waits for (``waits.kind``)."""

    CHILDREN = "children"  # its sub-agent runs to end
    SIGNAL = "signal"  # a named signal (a person's approval, an external event)
    TIMER = "timer"  # a time


class TimeoutPolicy(enum.StrEnum):
    """What a wait's timeout does (``waits.on_timeout``)."""

    FAIL = "fail"  # the run fails (wait_timed_out); its sub-agent runs are cancelled
    CONTINUE = "continue"  # the run goes on, the call's result says it timed out


class FailurePolicy(enum.StrEnum):
    """What a failed sub-agent run does to the run that delegated to it."""

    FAIL = "fail"  # the parent fails (child_failed); its other sub-agent runs are cancelled
    SKIP = "skip"  # the parent goes on; the child's result is its error
    RETRY = "retry"  # started again (as a new run), up to its retries; then as ``fail``


class ErrorType(enum.StrEnum):
    """Why a run failed (``runs.error_type``), or which guardrail stopped a step."""

    BUDGET_EXCEEDED = "budget_exceeded"
    OUTPUT_REJECTED = "output_rejected"
    TOOL_NOT_ALLOWED = "tool_not_allowed"  # a denied step only; never a run's error_type
    MODEL_ERROR = "model_error"
    INPUT_REJECTED = "input_rejected"
    UNKNOWN_AGENT = "unknown_agent"
    DEAD_LETTERED = "dead_lettered"
    SESSION_BUSY = "session_busy"  # another run of its session was running (sessions.busy=fail)
    FOREIGN_SESSION = "foreign_session"  # its session belongs to another tenant
    CANCELLED = "cancelled"  # a cancelled run's (status cancelled)
    CHILD_FAILED = "child_failed"  # a sub-agent run failed under the failure policy "fail"
    WAIT_TIMED_OUT = "wait_timed_out"  # a durable wait passed its timeout (policy "fail")

    @property
    def guardrail(self) -> bool:
        """Whether a guardrail (budget, tool allowlist, validator) raised it."""
        return self in _GUARDRAILS


_ENDED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})

_GUARDRAILS = frozenset(
    {ErrorType.BUDGET_EXCEEDED, ErrorType.OUTPUT_REJECTED, ErrorType.TOOL_NOT_ALLOWED}
)


class _NoAnswer:
    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Final = _NoAnswer()
"""Default of ``commit_step(final_answer=...)``: the step is not final (None is a valid answer)."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One tool call of a step: what the model asked for and what came back.

    ``error``: the result is an error the model was shown (unknown tool, arguments that do
    not fit the tool's schema, a failure, a deadline, a call its agent may not make).
    """

    id: str
    name: str
    args: Any = None
    result: Any = None
    error: bool = False

    def to_json(self) -> dict[str, Any]:
        """The call as ``steps.tool_calls`` stores it."""
        return {
            "id": self.id,
            "name": self.name,
            "args": self.args,
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CallRecord:
        """A call as :meth:`to_json` stored it."""
        return cls(
            str(data["id"]),
            str(data["name"]),
            data.get("args"),
            data.get("result"),
            bool(data.get("error", False)),
        )


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One committed step: the model's output and the tool calls it made, with their results."""

    step: int
    kind: StepKind
    model_output: str
    tool_calls: tuple[CallRecord, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    worker: str | None = None
    created_at: datetime | None = None  # set by the store on commit
    replica: str | None = None  # the inference server the step's model call went to

    @property
    def tools(self) -> list[str]:
        """The names of the tools the step called, in order."""
        return [call.name for call in self.tool_calls]


@dataclass(frozen=True, slots=True)
class StepDraft:
    """A step's model reply kept before its tool calls run, and the results kept so far.

    A step whose worker died between two calls is redelivered; it finds its draft, asks the
    model nothing, and runs only the calls in ``calls`` that have no entry in ``results``
    (call id -> (result, error)).
    """

    step: int
    model_output: str
    calls: tuple[dict[str, Any], ...]  # as asked: app.inference.chat.ToolCall.to_json()
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    results: dict[str, tuple[Any, bool]] = field(default_factory=dict)
    replica: str | None = None  # this delivery's model call's server (a kept draft has none)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row: its status and where it stands, without its steps."""

    id: str
    session_id: str | None
    agent: str
    input: Any
    status: RunStatus
    next_step: int
    answer: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    error_type: ErrorType | None = None  # why a failed run ended
    budget: dict[str, Any] | None = None  # the run's limits (app.agents.guardrails.Budget)
    traceback: str | None = None  # of the error a failed run ended with, when one raised
    tenant: str = DEFAULT_TENANT  # whose run it is
    parent_id: str | None = None  # the run that delegated to this one (a sub-agent run)
    lineage: list[str] | None = None  # agent types of its ancestors, the root's first
    cancel_requested_at: datetime | None = None  # cancelled while running: ends at its next step
    child_tokens_in: int = 0  # what its sub-agent runs spent (their budgets are part of its)
    child_tokens_out: int = 0


@dataclass(frozen=True, slots=True)
class RunState(RunRecord):
    """A run with its committed steps, ordered by step index."""

    steps: list[StepRecord] = field(default_factory=list)
    draft: StepDraft | None = None  # the reply of its next step, kept before its tool calls
    # Its session's history version, read with it (None: no session): the history cache's tag.
    history_version: int | None = None


@dataclass(frozen=True, slots=True)
class SessionClaim:
    """What a run's claim on its session found: the run that holds the session (this one when
    the claim succeeded) and the session's history version."""

    holder: str | None
    history_version: int = 0
    started_at: datetime | None = None  # the claim created the run: when it started
    foreign: bool = False  # the session is another tenant's: nothing was claimed or created

    def held_by(self, run_id: str) -> bool:
        """Whether ``run_id`` holds the session."""
        return self.holder == run_id


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
    tenant: str = DEFAULT_TENANT
    parent_id: str | None = None  # a sub-agent run: the run that delegated to it
    lineage: list[str] | None = None  # its ancestors' agent types, the root's first

    def state(self) -> RunState:
        """The run as it stands before its first step."""
        return RunState(
            self.id,
            self.session_id,
            self.agent,
            self.input,
            RunStatus.RUNNING,
            0,
            None,
            None,
            self.created_at,
            None,
            budget=self.budget,
            tenant=self.tenant,
            parent_id=self.parent_id,
            lineage=self.lineage,
        )


def utc_now() -> datetime:
    return datetime.now(UTC)
