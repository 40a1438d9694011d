"""The wait a tool returns travels as a kept JSON result and back; the built-in tools check
their arguments for the model; a tool of your own returns a wait through its context."""

from __future__ import annotations

import pytest

from app.agents.tools import TOOLS, ToolContext
from app.agents.waits import Delegate, Sleep, Task, WaitForSignal, from_json, to_json
from app.errors import ToolArgumentsError
from app.memory.records import FailurePolicy, TimeoutPolicy

CTX = ToolContext(run_id="r", step=0, agent="boss", redis=None)


@pytest.mark.parametrize(
    "wait",
    [
        Delegate(
            (Task("a", "x"), Task("b", {"q": 1}, {"max_steps": 2})),
            FailurePolicy.RETRY,
            2,
            30.0,
            TimeoutPolicy.CONTINUE,
        ),
        WaitForSignal("approval", 3600.0, TimeoutPolicy.FAIL),
        Sleep(1.5),
    ],
)
def test_a_wait_survives_its_json_round_trip(wait: object) -> None:
    assert from_json(to_json(wait)) == wait  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [None, 3, {"a": 1}, {"$agentq_wait": {"kind": "?"}}])
def test_ordinary_results_are_no_wait(value: object) -> None:
    assert from_json(value) is None


def test_the_delegate_tool_returns_its_wait() -> None:
    spec = TOOLS["delegate"]
    args = spec.validate({"tasks": [{"agent": "a", "input": "x"}], "on_failure": "skip"})
    wait = from_json(spec.invoke(args, CTX))
    assert wait == Delegate((Task("a", "x"),), FailurePolicy.SKIP)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"tasks": []}, "at least one task"),
        ({"tasks": [{"input": "x"}]}, "'agent'"),
        ({"tasks": [{"agent": "a"}]}, "no 'input'"),
        ({"tasks": [{"agent": "a", "input": 1}], "retries": -1}, "negative"),
    ],
)
def test_the_delegate_tool_tells_the_model_what_is_wrong(args: dict, error: str) -> None:
    spec = TOOLS["delegate"]
    with pytest.raises(ToolArgumentsError, match=error):
        spec.invoke(spec.validate(args), CTX)


def test_a_tool_of_your_own_returns_a_wait_through_its_context() -> None:
    assert from_json(TOOLS["sleep"].invoke({"seconds": 2}, CTX)) == Sleep(2)
    assert CTX.wait_for_signal("ok", timeout_s=5) == WaitForSignal("ok", 5)
    assert CTX.delegate([("a", "x")], retries=1) == Delegate((Task("a", "x"),), retries=1)
