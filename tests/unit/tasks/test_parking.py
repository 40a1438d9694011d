"""What a step that asked to wait parks its run on: checks of sub-agent runs (known agent,
valid input, depth, fan-out, cycles), what they inherit of the budget, and one kind of wait per
step."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from app.agents.guardrails import Budget, Usage
from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.waits import Delegate, Sleep, Task, WaitForSignal, to_json
from app.config import OrchestrationSettings, Settings
from app.memory.records import CallRecord, FailurePolicy, NewRun, RunState, WaitKind, utc_now
from app.tasks.parking import plan, remaining
from app.tasks.steps import StepMessage

REGISTRY = AgentRegistry(
    [
        AgentSpec(name="boss", tools=("delegate",)),
        AgentSpec(name="worker"),
        AgentSpec(name="critic", max_input_bytes=20),
    ]
)
NOW = utc_now()


def settings(**orchestration: Any) -> Settings:
    return Settings(_env_file=None, orchestration=OrchestrationSettings(**orchestration))


def state(lineage: list[str] | None = None, tenant: str = "default") -> RunState:
    return NewRun("p", "boss", "go", lineage=lineage, parent_id="g" if lineage else None,
                  tenant=tenant).state()  # fmt: skip


def call(wait: Any, call_id: str = "c0") -> CallRecord:
    return CallRecord(call_id, "delegate", {}, to_json(wait))


NO_LIMITS = Budget()


def planned(
    calls: tuple[CallRecord, ...],
    *,
    budget: Budget = NO_LIMITS,
    used: Usage | None = None,
    lineage: list[str] | None = None,
    stream: bool = False,
    **limits: Any,
) -> Any:
    msg = StepMessage("p", "boss", 0, stream=stream, tenant="acme")
    used = used or Usage(0, 0, 0, 0, 0.0)
    spec = REGISTRY.spec("boss")
    return plan(REGISTRY, settings(**limits), spec, msg, state(lineage, "acme"), calls, budget,
                used, NOW)  # fmt: skip


def test_ordinary_results_do_not_park() -> None:
    calls = (CallRecord("c0", "search", {}, {"hits": []}),)
    assert planned(calls) == (calls, None)


def test_a_delegate_call_parks_on_its_children_with_the_next_steps_message() -> None:
    wait = Delegate((Task("worker", "a"), Task("critic", "b")), FailurePolicy.SKIP, 0, 60.0)
    calls, park = planned((call(wait),), stream=True)
    assert park.kind is WaitKind.CHILDREN and park.call_id == "c0"
    assert park.message == {"agent": "boss", "session_id": None, "run_id": "p", "step": 1,
                            "stream": True, "tenant": "acme"}  # fmt: skip
    assert park.due_at == NOW + timedelta(seconds=60)
    first, second = park.children
    assert (first.agent, first.input, first.position, first.on_failure) == (
        "worker", "a", 0, FailurePolicy.SKIP
    )  # fmt: skip
    assert first.kwargs["tenant"] == "acme"  # a child is its parent's tenant's
    assert first.kwargs["parent"] == {"run": "p", "lineage": ["boss"], "stream": "p"}
    assert second.position == 1 and first.run_id != second.run_id
    assert calls == (call(wait),)


@pytest.mark.parametrize(
    ("tasks", "lineage", "limits", "refused"),
    [
        ([Task("nobody", "x")], None, {}, "task #0 ('nobody') refused"),
        ([Task("critic", "x" * 50)], None, {}, "bytes once JSON-encoded"),
        ([Task("worker", "x")] * 3, None, {"max_fan_out": 2}, "at most 2"),
        ([Task("worker", "x")], ["a", "b", "c"], {"max_depth": 3}, "may go 3 deep"),
        ([Task("boss", "x")], None, {}, "already in this run's chain (boss)"),
        ([Task("worker", "x")], ["worker"], {}, "already in this run's chain (worker -> boss)"),
    ],
)
def test_a_delegation_that_fails_a_check_is_the_calls_error_and_parks_nothing(
    tasks: list[Task], lineage: list[str] | None, limits: dict[str, int], refused: str
) -> None:
    calls, park = planned((call(Delegate(tuple(tasks))),), lineage=lineage, **limits)
    assert park is None
    assert calls[0].error and refused in calls[0].result["error"]


def test_one_kind_of_wait_per_step() -> None:
    asked = (call(WaitForSignal("ok"), "c0"), call(Sleep(5), "c1"), call(Delegate(
        (Task("worker", "x"),)), "c2"))  # fmt: skip
    calls, park = planned(asked)
    assert park.kind is WaitKind.SIGNAL and park.name == "ok" and park.call_id == "c0"
    assert [c.error for c in calls] == [False, True, True]
    assert "one kind of wait per step" in calls[1].result["error"]


def test_a_sleep_is_a_timer_due_after_its_seconds() -> None:
    _, park = planned((call(Sleep(90)),))
    assert park.kind is WaitKind.TIMER and park.due_at == NOW + timedelta(seconds=90)


def test_children_inherit_what_is_left_of_the_budget_tightened_by_their_own() -> None:
    budget = Budget(max_tokens_in=1000, max_tokens_out=200, max_wall_time_s=60, max_steps=9)
    used = Usage(steps=2, tokens_in=400, tokens_out=150, tool_calls=1, wall_time_s=20.0)
    assert remaining(budget, used) == {
        "max_tokens_in": 600, "max_tokens_out": 50, "max_wall_time_s": 40.0
    }  # fmt: skip
    wait = Delegate((Task("worker", "x"), Task("worker", "y", {"max_tokens_out": 10})))
    _, park = planned((call(wait),), budget=budget, used=used)
    assert park.children[0].kwargs["budget"] == {
        "max_tokens_in": 600, "max_tokens_out": 50, "max_wall_time_s": 40.0
    }  # fmt: skip
    assert park.children[1].kwargs["budget"]["max_tokens_out"] == 10
