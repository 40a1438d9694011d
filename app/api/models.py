"""The API's request and response bodies, and the data of its events (their JSON schemas are
the OpenAPI document's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, StrictStr

from app.agents.guardrails import Budget
from app.memory.records import RunState, StepRecord
from app.memory.run_tree import ChildRun, WaitInfo
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


class ChildView(BaseModel):
    """A sub-agent run, with its own (a tree)."""

    id: str
    agent: str
    status: RunStatusName = Field(description="`queued` while it has not started.")
    answer: JsonValue = None
    error: str | None = None
    step: int = Field(description="The step of the run above that delegated to it.")
    attempt: int = Field(description="1, or the retry that started it (on_failure: retry).")
    children: list[ChildView] = Field(default_factory=list)

    @classmethod
    def of(cls, child: ChildRun) -> ChildView:
        """The view of one node of :func:`app.memory.run_tree.children_tree`."""
        return cls(
            id=child.run_id,
            agent=child.agent,
            status=child.status,  # type: ignore[arg-type]  # a run status or "queued"
            answer=child.answer,
            error=child.error,
            step=child.step,
            attempt=child.attempt,
            children=[cls.of(c) for c in child.children],
        )


class WaitingView(BaseModel):
    """What a parked (``waiting``) run waits for."""

    kind: Literal["children", "signal", "timer"]
    step: int = Field(description="The step that parked the run.")
    signal: str | None = Field(default=None, description="The signal's name (kind signal).")
    pending: int | None = Field(
        default=None, description="Sub-agent runs not ended yet (kind children)."
    )
    due_at: datetime | None = Field(
        default=None, description="A timer's time, or when the wait times out (none: never)."
    )
    on_timeout: Literal["fail", "continue"] | None = Field(
        default=None, description="What the timeout does (none for a timer)."
    )
    since: datetime = Field(description="When the run parked.")

    @classmethod
    def of(cls, wait: WaitInfo) -> WaitingView:
        """The view of a run's open wait."""
        timer = wait.kind == "timer"
        return cls(
            kind=wait.kind.value,
            step=wait.step,
            signal=wait.name if wait.kind == "signal" else None,
            pending=wait.pending if wait.kind == "children" else None,
            due_at=wait.due_at,
            on_timeout=None if timer else wait.on_timeout.value,
            since=wait.since,
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
    parent_id: str | None = Field(
        default=None, description="A sub-agent run: the run that delegated to it."
    )
    children: list[ChildView] = Field(
        default_factory=list,
        description="Its sub-agent runs, each with its own, in the order they were started.",
    )
    waiting_for: WaitingView | None = Field(
        default=None, description="While `waiting`: the signal, sub-agent runs or time."
    )
    children_truncated: bool = Field(
        default=False, description="The tree had more sub-agent runs than are shown (1000)."
    )

    @classmethod
    def of_detail(cls, detail: RunDetail) -> RunView:
        """The view of a run as :func:`app.ops.runs.run_detail` reads it."""
        if detail.stored is not None:
            view = cls.of(detail.stored, detail.stream)
            view.children = [ChildView.of(child) for child in detail.children]
            view.children_truncated = detail.children_truncated
            if detail.waiting_for is not None:
                view.waiting_for = WaitingView.of(detail.waiting_for)
            return view
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
            parent_id=run.parent_id,
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


class SignalCreate(BaseModel):
    """A signal's payload (``POST /v1/runs/{id}/signals/{name}``)."""

    model_config = ConfigDict(extra="forbid")

    data: JsonValue = Field(
        default=None, description="Any JSON value: the result of the run's wait_for_signal call."
    )


class SignalSent(BaseModel):
    """What a signal did: ``resumed`` the run, or found the same signal delivered before."""

    run_id: str
    name: str
    resumed: bool = Field(description="False: delivered before, nothing resumed this time.")


class CancelDone(BaseModel):
    """What a cancellation did."""

    run_id: str
    was: RunStatusName = Field(description="The run's status before (queued: not started).")
    cancelled: bool = Field(
        description="True: ended now (waiting, queued) or asked to stop at its next step "
        "(running); false: it had ended, nothing was done."
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

    status: Literal["succeeded", "failed", "cancelled"]
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
