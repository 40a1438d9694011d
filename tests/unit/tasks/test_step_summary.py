"""What a step's task returns for monitors (Flower's Result column): the step and the tool it
called, or that it answered; never the answer, the arguments or a long name."""

from __future__ import annotations

import json

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.memory.records import StepKind
from app.memory.sessions import SessionStore
from app.ops.masking import MASK
from app.tasks.runner import StepRunner
from app.tasks.steps import MAX_TOOL_NAME, Outcome, StepMessage, StepResult, summary
from tests.fixtures.backends import ReplyList


def test_a_tool_step_names_its_tools_in_order() -> None:
    one = StepResult(Outcome.NEXT, next_step=1, kind=StepKind.TOOL, tools=("search",))
    assert summary(0, one) == "step 0: tool search"
    two = StepResult(Outcome.NEXT, next_step=4, kind=StepKind.TOOL, tools=("kv_get", "kv_set"))
    assert summary(3, two) == "step 3: tool kv_get, kv_set"
    denied = StepResult(Outcome.NEXT, next_step=2, kind=StepKind.DENIED, tools=("rm_rf",))
    assert summary(1, denied) == "step 1: denied tool rm_rf"


def test_an_answer_is_said_not_shown() -> None:
    result = StepResult(Outcome.DONE, answer="the secret plan " * 100)
    assert summary(2, result) == "step 2: answer"


@pytest.mark.parametrize(
    ("outcome", "said"),
    [
        (Outcome.REPUBLISH, "committed before, next step published again"),
        (Outcome.BUSY, "run busy on another worker, tried again shortly"),
        (Outcome.SKIP, "duplicate message, skipped"),
    ],
)
def test_a_step_that_did_not_run_says_why(outcome: Outcome, said: str) -> None:
    assert summary(4, StepResult(outcome)) == f"step 4: {said}"


def test_a_name_the_model_made_up_is_cut_and_masked() -> None:
    # A denied call's name is whatever the model wrote.
    name = "token=sk-live-abc " + "x" * 500
    said = summary(0, StepResult(Outcome.NEXT, kind=StepKind.DENIED, tools=(name,)))
    assert said.startswith(f"step 0: denied tool token={MASK} x")
    assert "sk-live" not in said and len(said) < MAX_TOOL_NAME + 60


def test_the_runner_reports_the_tools_a_committed_step_called(tmp_path) -> None:
    registry = AgentRegistry([AgentSpec(name="counter", tools=("word_count",), max_steps=4)])
    store = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    call = json.dumps({"tool": "word_count", "args": {"text": "a b"}})
    backend = ReplyList(call, "Answer: 2")
    runner = StepRunner(Settings(), registry, store, fakeredis.FakeRedis(), {"triton": backend})
    try:
        first = runner.run_step(StepMessage("run", "counter", 0, "count"))
        last = runner.run_step(StepMessage("run", "counter", 1))
    finally:
        runner.tools.close()
        store.close()
    assert (first.outcome, first.kind, first.tools) == (
        Outcome.NEXT,
        StepKind.TOOL,
        ("word_count",),
    )
    assert summary(0, first) == "step 0: tool word_count"
    assert summary(1, last) == "step 1: answer"
