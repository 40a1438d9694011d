"""One repair turn for a reply whose tool call does not parse, then the typed error."""

from __future__ import annotations

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.inference.backend import ChatRequest, Completion
from app.inference.templates import REPAIR_PREFIX, ChatTemplate
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import steps as recorded

REGISTRY = AgentRegistry([AgentSpec(name="research", tools=("calculator",), max_steps=3)])
GOOD = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3"}}\n</tool_call>'
BAD = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+3",}}\n</tool_call>'


class TemplateReplies:
    """Replies from a list, read back in the Hermes tool-call format as TritonBackend reads a
    model's reply (a call that does not parse raises ToolCallParseError)."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.requests: list[ChatRequest] = []
        self.template = ChatTemplate.named("hermes")

    def generate(self, request: ChatRequest, **_route) -> Completion:
        self.requests.append(request)
        text, calls = self.template.parse(self.replies.pop(0))
        return Completion(text, 1, 1, 0.0, "fake", calls)


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


def run_step(store, backend, step=0):
    runner = StepRunner(
        Settings(), REGISTRY, store, fakeredis.FakeRedis(), {"triton": backend}, "w1"
    )
    return runner.run_step(StepMessage("run", "research", step, "add 2 and 3"))


def test_a_call_that_does_not_parse_is_asked_again_once_in_the_same_step(store):
    backend = TemplateReplies(BAD, GOOD, "Answer: 5")
    assert run_step(store, backend).outcome is Outcome.NEXT
    repair = backend.requests[1].messages
    assert repair[:-2] == backend.requests[0].messages
    assert (repair[-2].role, repair[-2].content) == ("assistant", BAD)
    assert repair[-1].role == "user" and repair[-1].content.startswith(REPAIR_PREFIX)
    assert "not valid JSON" in repair[-1].content
    assert run_step(store, backend, step=1).outcome is Outcome.DONE
    run = store.load_run("run")
    # The step keeps the repaired reply; the next step's conversation has no trace of the bad one.
    assert [(s.kind, recorded.result(s)) for s in run.steps] == [("tool", 5), ("final", None)]
    assert BAD not in [m.content for m in backend.requests[2].messages]


def test_a_second_bad_reply_fails_the_run_with_the_reason(store):
    backend = TemplateReplies(BAD, '<tool_call>\n{"arguments": {}}\n</tool_call>', GOOD)
    failed = run_step(store, backend)
    assert failed.outcome is Outcome.FAILED
    assert 'tool call did not parse: call 1 has no "name" string' in failed.reason
    assert len(backend.requests) == 2  # one repair turn, no more
    run = store.load_run("run")
    assert run.status == "failed" and run.error_type == "model_error"


def test_a_reply_without_the_marker_is_an_answer(store):
    backend = TemplateReplies('{"name": "calculator", "arguments": {')
    done = run_step(store, backend)
    assert done.outcome is Outcome.DONE and done.answer == '{"name": "calculator", "arguments": {'
    assert len(backend.requests) == 1


def test_each_reply_of_a_run_is_asked_with_the_agents_tool_choice_for_it(store):
    registry = AgentRegistry(
        [AgentSpec(name="research", tools=("calculator",), tool_choice=("required", "none"))]
    )
    backend = TemplateReplies(GOOD, "Answer: 5")
    runner = StepRunner(
        Settings(), registry, store, fakeredis.FakeRedis(), {"triton": backend}, "w1"
    )
    for step in (0, 1):
        runner.run_step(StepMessage("run", "research", step, "add 2 and 3"))
    assert [r.tool_choice for r in backend.requests] == ["required", "none"]
    assert store.load_run("run").answer == "Answer: 5"
