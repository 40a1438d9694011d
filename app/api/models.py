"""The API's request and response bodies, and the data of its events (their JSON schemas are
the OpenAPI document's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictStr

from app.agents.guardrails import Budget
from app.memory.records import RunState, StepRecord
from app.ops.runs import RunDetail, RunStatusName, RunSummary


class RunCreate(BaseModel):
    """A run to submit: the fields of ``app.producer.submit.submit``."""

    model_config = ConfigDict(extra="forbid")

    agent: StrictStr = Field(description="The agent type to run.")
    input: JsonValue = Field(description="The run's input: any JSON value, not null or blank.")
    session_id: StrictStr | None = Field(
        default=None, description="Session whose history the run continues."
    )
    budget: Budget | None = Field(
        default=None, description="Limits tightening the agent type's budget for this run."
    )
    stream: StrictBool = Field(
        default=False,
        description="Relay the model's tokens as they are generated (GET .../events).",
    )


class RunLinks(BaseModel):
    """Where to read the run."""

    self: str = Field(description="GET: the run.")
    events: str = Field(description="GET: the run's events (Server-Sent Events).")

    @classmethod
    def of(cls, run_id: str) -> RunLinks:
        """The links of run ``run_id``."""
        return cls(self=f"/v1/runs/{run_id}", events=f"/v1/runs/{run_id}/events")


class RunAccepted(BaseModel):
    """A run accepted and enqueued (or the run an idempotency key already named)."""

    id: str
    status: Literal["queued"] = "queued"
    links: RunLinks


class RunReplayed(BaseModel):
    """A dead-lettered run sent back to its queue."""

    id: str
    status: Literal["queued"] = "queued"
    step: int = Field(description="The step the run resumes at: the one that failed.")
    links: RunLinks


class ToolCallView(BaseModel):
    """One tool call of a step."""

    id: str
    name: str
    args: JsonValue = None
    result: JsonValue = None
    error: bool = Field(default=False, description="The result is an error shown to the model.")


class StepView(BaseModel):
    """One committed step of a run."""

    index: int
    kind: Literal["tool", "denied", "final", "error"]
    model_output: str = Field(description="The model's reply.")
    tool_calls: list[ToolCallView]
    tokens_in: int
    tokens_out: int
    latency_ms: float
    worker: str | None = Field(description="The worker node that ran the step.")
    replica: str | None = Field(
        default=None, description="The inference server the step's model call went to."
    )
    created_at: datetime | None

    @classmethod
    def of(cls, step: StepRecord) -> StepView:
        """The view of a stored step."""
        return cls(
            index=step.step,
            kind=step.kind.value,
            model_output=step.model_output,
            tool_calls=[ToolCallView(**call.to_json()) for call in step.tool_calls],
            tokens_in=step.tokens_in,
            tokens_out=step.tokens_out,
            latency_ms=step.latency_ms,
            worker=step.worker,
            replica=step.replica,
            created_at=step.created_at,
        )


class RunView(BaseModel):
    """A run: where it stands, its steps, its answer or error.

    A queued run (no step stored yet) has only ``id``, ``agent``, ``status``, ``session_id``,
    ``stream`` and ``created_at`` (when it was submitted).
    """

    id: str
    agent: str
    status: RunStatusName
    session_id: str | None = None
    input: JsonValue = None
    stream: bool | None = Field(
        default=None,
        description="Submitted with stream=true (known while queued, and while the run's token "
        "stream is kept).",
    )
    steps: list[StepView] = Field(default_factory=list)
    answer: JsonValue = None
    error: str | None = None
    error_type: str | None = Field(default=None, description="Why a failed run ended.")
    traceback: str | None = Field(
        default=None, description="The traceback of the error a failed run ended with, if any."
    )
    created_at: datetime | None = Field(
        default=None,
        description="When its first step started; for a queued run, when it was submitted.",
    )
    finished_at: datetime | None = None

    @classmethod
    def of_detail(cls, detail: RunDetail) -> RunView:
        """The view of a run as :func:`app.ops.runs.run_detail` reads it."""
        if detail.stored is not None:
            return cls.of(detail.stored, detail.stream)
        return cls(
            id=detail.id,
            agent=detail.agent,
            status=detail.status,
            session_id=detail.session_id,
            stream=detail.stream,
            created_at=detail.submitted_at,
        )

    @classmethod
    def of(cls, run: RunState, stream: bool | None = None) -> RunView:
        """The view of a stored run."""
        return cls(
            id=run.id,
            agent=run.agent,
            status=run.status.value,
            session_id=run.session_id,
            input=run.input,
            stream=stream,
            steps=[StepView.of(step) for step in run.steps],
            answer=run.answer,
            error=run.error,
            error_type=run.error_type.value if run.error_type else None,
            traceback=run.traceback,
            created_at=run.created_at,
            finished_at=run.finished_at,
        )


def run_json(run: RunState) -> dict[str, Any]:
    """A stored run as JSON, as ``GET /v1/runs/{id}`` and ``agentq runs show --json`` show it
    (what session and tenant exports write per run)."""
    return RunView.of(run).model_dump(mode="json")


class RunItem(BaseModel):
    """A run as the listing shows it (GET its ``links.self`` for its steps)."""

    id: str
    agent: str
    status: RunStatusName
    session_id: str | None = None
    steps: int = Field(description="Steps committed so far.")
    error_type: str | None = Field(default=None, description="Why a failed run ended.")
    created_at: datetime = Field(
        description="When its first step started; for a queued run, when it was submitted "
        "(the listing's order, newest first)."
    )
    finished_at: datetime | None = None
    links: RunLinks

    @classmethod
    def of(cls, run: RunSummary) -> RunItem:
        """The item of one listed run."""
        return cls(
            id=run.id,
            agent=run.agent,
            status=run.status,
            session_id=run.session_id,
            steps=run.steps,
            error_type=run.error_type,
            created_at=run.created_at,
            finished_at=run.finished_at,
            links=RunLinks.of(run.id),
        )


class RunList(BaseModel):
    """A page of runs, newest first."""

    items: list[RunItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class AttemptData(BaseModel):
    """``attempt``: a step's model call begins; a second one for a step voids its tokens."""

    step: int


class TokenData(BaseModel):
    """``token``: a piece of the model's reply in step ``step`` (pieces concatenate)."""

    step: int
    text: str


class StepData(BaseModel):
    """``step``: step ``index`` is committed; ``tools``: the tools it called, in order."""

    index: int
    kind: Literal["tool", "denied", "final", "error"]
    tools: list[str]


class EndData(BaseModel):
    """``end``: the run is over, with its answer or its error (the last event)."""

    status: Literal["succeeded", "failed"]
    answer: JsonValue = None
    error: str | None = None


EVENT_DATA: dict[str, type[BaseModel]] = {
    "attempt": AttemptData,
    "token": TokenData,
    "step": StepData,
    "end": EndData,
}
"""Each event name of GET /v1/runs/{id}/events and the schema of its ``data``."""


def event_data(name: str, **fields: Any) -> str:
    """The ``data`` line of one event, checked against its schema."""
    return EVENT_DATA[name](**fields).model_dump_json(exclude_unset=True)
