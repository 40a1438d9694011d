"""Settings of orchestration (``AGENTQ_ORCHESTRATION__*``): sub-agent runs, durable waits
(signals, timers) and cancellation."""

from __future__ import annotations

from pydantic import BaseModel, Field


class OrchestrationSettings(BaseModel):
    """Sub-agent runs and parked runs: how deep and wide a run may fan out, how large a signal
    may be, how often workers look for timers that fall due."""

    max_depth: int = Field(
        default=3,
        ge=1,
        description="Most levels of sub-agent runs under a run started by a producer (1: its "
        "children may not delegate again).",
    )
    max_fan_out: int = Field(
        default=100,
        ge=1,
        description="Most sub-agent runs one step may start (over all its delegate calls).",
    )
    signal_max_bytes: int = Field(
        default=65_536,
        gt=0,
        description="Largest payload of a signal, in bytes of JSON.",
    )
    timer_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often a worker looks for its agents' waits that fall due (timers, "
        "timeouts): how late a timer may fire.",
    )
    timer_batch: int = Field(
        default=200, gt=0, description="Most due waits one poll of a worker ends."
    )
