"""What a step gets and gives: the message's arguments, the outcome the task shell acts on."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from app.agents.guardrails import Usage
from app.constants import DEFAULT_TENANT
from app.memory.records import ErrorType, RunState, StepKind
from app.memory.waits import Effects
from app.ops.masking import mask_text


class Outcome(enum.Enum):
    """What the task shell does after a step."""

    NEXT = "next"  # step committed: publish step `next_step`
    REPUBLISH = "republish"  # step was committed earlier: make sure `next_step` was published
    DONE = "done"  # run succeeded: store `answer` for the run
    FAILED = "failed"  # run ended without an answer: store `reason`
    BUSY = "busy"  # another worker holds the run: try this message again shortly
    SESSION_BUSY = "session_busy"  # another run holds its session: try again after a delay
    SKIP = "skip"  # a stale duplicate message: drop it
    PARKED = "parked"  # step committed, the run waits: carry out `effects` (no next step)


@dataclass(frozen=True, slots=True)
class StepMessage:
    """The arguments of one ``agentq.run_agent`` message."""

    run_id: str
    agent: str
    step: int
    input: Any = None
    session_id: str | None = None
    stream: bool = False  # relay the model's tokens to the producer (app.producer.results)
    budget: dict[str, Any] | None = None  # step 0 only: limits tightening the agent's budget
    # Step 0 as a producer submitted it, delivered for the first time (not redelivered,
    # retried or requeued): its run is almost never in the store yet, so the load is put
    # off until something depends on it (see StepRunner._run_leased).
    first: bool = False
    tenant: str = DEFAULT_TENANT  # whose run it is (the store's row is what a step trusts)
    # A sub-agent run's: {"run": parent id, "lineage": ancestors' agent types, "stream": the
    # stream its steps are shown in, when the root run streams}.
    parent: dict[str, Any] | None = None

    @property
    def stream_to(self) -> str | None:
        """The run whose stream shows this sub-agent run's steps (None: its own, if any)."""
        return self.parent.get("stream") if self.parent else None

    def next_kwargs(self, step: int) -> dict[str, Any]:
        """The keyword arguments of this run's message for ``step``."""
        return {
            "agent": self.agent,
            "session_id": self.session_id,
            "run_id": self.run_id,
            "step": step,
            **({"stream": True} if self.stream else {}),
            # Whose run: the relay's stream key and the metrics' label need it before any load.
            **({"tenant": self.tenant} if self.tenant != DEFAULT_TENANT else {}),
            **({"parent": self.parent} if self.stream_to else {}),
        }


@dataclass(frozen=True, slots=True)
class StepResult:
    outcome: Outcome
    next_step: int | None = None
    answer: Any = None
    reason: str | None = None
    error_type: ErrorType | None = None  # FAILED: why, as a type
    lease: str | None = None  # run_step(keep_lease=True): the token of the lease still held
    kind: StepKind | None = None  # NEXT: what the committed step did
    tools: tuple[str, ...] = ()  # NEXT: the tools it called, in order
    effects: Effects | None = None  # what to carry out: sub-agent runs, a parent resumed...


MAX_TOOL_NAME = 64  # characters of a tool name a summary shows (a denied name is the model's)
_OUTCOME_SAID = {
    Outcome.NEXT: "handed on",
    Outcome.REPUBLISH: "committed before, next step published again",
    Outcome.DONE: "answer",
    Outcome.FAILED: "run failed",
    Outcome.BUSY: "run busy on another worker, tried again shortly",
    Outcome.SESSION_BUSY: "session busy with another run, tried again later",
    Outcome.SKIP: "duplicate message, skipped",
    Outcome.PARKED: "run parked",
}


def summary(step: int, result: StepResult) -> str:
    """What a step's task returns for monitors (Flower's Result column): the step and what it
    did, e.g. ``step 0: tool search`` or ``step 2: answer``; never the answer or arguments."""
    if result.kind in (StepKind.TOOL, StepKind.DENIED) and result.tools:
        names = ", ".join(mask_text(name, MAX_TOOL_NAME) for name in result.tools)
        said = f"{'denied ' if result.kind is StepKind.DENIED else ''}tool {names}"
    else:
        said = _OUTCOME_SAID[result.outcome]
    return f"step {step}: {said}"


def usage(state: RunState, now: float) -> Usage:
    """What ``state``'s committed steps have spent (``now``: Unix time)."""
    return Usage(
        steps=len(state.steps),
        # Its sub-agent runs' tokens count too: their budgets came out of this run's.
        tokens_in=sum(s.tokens_in for s in state.steps) + state.child_tokens_in,
        tokens_out=sum(s.tokens_out for s in state.steps) + state.child_tokens_out,
        tool_calls=sum(len(s.tool_calls) for s in state.steps if s.kind == StepKind.TOOL),
        wall_time_s=max(0.0, now - state.created_at.timestamp()),
    )
