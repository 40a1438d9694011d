"""Guardrails in the step runner: budgets, output validators, typed reasons in the store."""

from __future__ import annotations

import datetime
from dataclasses import replace

import fakeredis
import pytest

from app.agents.guardrails import Budget, ValidatorSpec
from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.inference.backend import count_tokens
from app.memory.sessions import NewRun, SessionStore, StepDraft
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import steps as recorded
from tests.fixtures.backends import CALC, ReplyList


class Counted(ReplyList):
    """Replies with real token counts, as a model server reports them."""

    def generate(self, request, **_route):
        reply = super().generate(request)
        tokens_in = count_tokens(self.prompts[-1])
        return replace(reply, tokens_in=tokens_in, tokens_out=count_tokens(reply.text))


REGISTRY = AgentRegistry(
    [
        AgentSpec(name="open", tools=("calculator",), max_steps=10),
        AgentSpec(name="tools", tools=("calculator",), budget=Budget(max_tool_calls=1)),
        AgentSpec(
            name="strict",
            output_validators=(ValidatorSpec(type="json_schema", schema={"type": "object"}),),
        ),
    ]
)


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


def runner(store, backend):
    return StepRunner(Settings(), REGISTRY, store, fakeredis.FakeRedis(), {"triton": backend}, "w1")


def test_output_tokens_over_budget_stop_the_run_and_keep_the_output(store):
    long = " ".join(f"w{i}" for i in range(50))
    r = runner(store, Counted(long))
    result = r.run_step(StepMessage("run", "open", 0, "talk", budget={"max_tokens_out": 20}))
    assert result.outcome is Outcome.FAILED and result.error_type == "budget_exceeded"
    assert "output token budget of 20 exceeded (50 generated)" in result.reason
    run = store.load_run("run")
    assert run.status == "failed" and run.error_type == "budget_exceeded"
    assert run.budget["max_tokens_out"] == 20 and run.budget["max_steps"] == 10
    assert run.steps[0].model_output == long  # what was spent is on record


def test_input_tokens_are_checked_before_the_call(store):
    backend = Counted(CALC, "Answer: 5")
    r = runner(store, backend)
    # Step 0's prompt fits; step 1's prompt (which repeats it plus the tool turn) does not.
    first_prompt_tokens = 12
    msg = StepMessage("run", "open", 0, "add", budget={"max_tokens_in": first_prompt_tokens + 5})
    assert r.run_step(msg).outcome is Outcome.NEXT
    stopped = r.run_step(StepMessage("run", "open", 1))
    assert stopped.error_type == "budget_exceeded" and "input token budget" in stopped.reason
    assert len(backend.prompts) == 1  # the second call never happened
    assert store.load_run("run").steps[1].kind == "error"


def test_the_tool_call_budget_stops_a_run_before_the_extra_call(store):
    r = runner(store, Counted(CALC, CALC))
    assert r.run_step(StepMessage("run", "tools", 0, "add")).outcome is Outcome.NEXT
    stopped = r.run_step(StepMessage("run", "tools", 1))
    assert stopped.error_type == "budget_exceeded" and "tool call budget of 1" in stopped.reason
    steps = store.load_run("run").steps
    assert [recorded.result(s) for s in steps] == [5, None]  # the second call was not made


def test_wall_time_is_checked_before_each_step(store):
    r = runner(store, Counted(CALC, "Answer: 5"))
    msg = StepMessage("run", "open", 0, "add", budget={"max_wall_time_s": 60})
    assert r.run_step(msg).outcome is Outcome.NEXT
    # Pretend the run started two minutes ago.
    with store.engine.begin() as conn:
        old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=2)
        conn.exec_driver_sql("UPDATE runs SET created_at = ?", (old.replace(tzinfo=None),))
    stopped = r.run_step(StepMessage("run", "open", 1))
    assert stopped.error_type == "budget_exceeded" and "wall time budget of 60 s" in stopped.reason


def test_an_answer_rejected_by_an_output_validator_fails_the_run(store):
    r = runner(store, Counted("Answer: not json"))
    result = r.run_step(StepMessage("run", "strict", 0, "hi"))
    assert result.outcome is Outcome.FAILED and result.error_type == "output_rejected"
    assert result.reason.startswith("answer rejected by json_schema:")
    run = store.load_run("run")
    assert run.answer is None and run.error_type == "output_rejected"


def test_an_answer_that_passes_its_validators_is_returned(store):
    r = runner(store, Counted('{"final": {"title": "ok"}}'))
    result = r.run_step(StepMessage("run", "strict", 0, "hi"))
    assert result.outcome is Outcome.DONE and result.answer == {"title": "ok"}


def test_a_redelivered_tool_step_reuses_its_kept_reply_and_result(store):
    """A worker died after the tool's result was kept, before the commit: the step's next
    delivery asks the model nothing and does not make the call again."""
    calls = ({"id": "call_0", "name": "calculator", "args": {"expression": "6*7"}},)
    store.save_draft("run", StepDraft(0, "", calls), NewRun("run", "open", "mul"))
    store.keep_result("run", 0, "call_0", 41, error=False)  # not 42: the kept one is used
    second = runner(store, Counted())  # no reply: a model call would fail the test
    assert second.run_step(StepMessage("run", "open", 0, "mul")).outcome is Outcome.NEXT
    state = store.load_run("run")
    assert recorded.result(state.steps[0]) == 41 and state.draft is None
