"""A step's tool call past its deadline or with an oversized result: the step commits a tool
error for the model and the run goes on."""

from __future__ import annotations

import json

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.sandbox import ToolSandbox
from app.config import LimitSettings, Settings
from app.constants import kv_key
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import tools as misbehaving
from tests.fixtures.backends import ReplyList

REGISTRY = AgentRegistry(
    [AgentSpec(name="tooler", tools=("test_block", "kv_get", "word_count"), max_steps=4)]
)


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


@pytest.fixture
def sandbox():
    box = ToolSandbox(threads=1, processes=1, default_deadline_s=30, memory_mb=256)
    yield box
    box.close()


def call(tool: str, **args) -> str:
    return json.dumps({"tool": tool, "args": args})


def test_a_tool_past_its_deadline_is_a_tool_error_and_the_run_goes_on(store, sandbox):
    backend = ReplyList(call("test_block"), call("word_count", text="a b"), "Answer: done")
    runner = StepRunner(
        Settings(), REGISTRY, store, fakeredis.FakeRedis(), {"triton": backend}, "w1", sandbox
    )
    misbehaving.RELEASE.clear()
    try:
        stuck = runner.run_step(StepMessage("run", "tooler", 0, "go"))
    finally:
        misbehaving.RELEASE.set()
    assert stuck.outcome is Outcome.NEXT
    assert runner.run_step(StepMessage("run", "tooler", 1)).outcome is Outcome.NEXT
    assert runner.run_step(StepMessage("run", "tooler", 2)).outcome is Outcome.DONE
    results = [s.tool_result for s in store.load_run("run").steps]
    assert results == [
        {"error": "tool 'test_block' ran past its 1 s deadline and was abandoned"},
        2,
        None,
    ]
    assert "Tool: " + json.dumps(results[0], separators=(",", ":")) in backend.prompts[1]


def test_an_oversized_result_is_committed_cut_and_marked(store, sandbox):
    redis = fakeredis.FakeRedis()
    redis.set(kv_key("big"), "y" * 500)
    settings = Settings(_env_file=None, limits=LimitSettings(tool_result_max_bytes=100))
    backend = ReplyList(call("kv_get", key="big"), "Answer: done")
    runner = StepRunner(settings, REGISTRY, store, redis, {"triton": backend}, "w1", sandbox)
    assert runner.run_step(StepMessage("run", "tooler", 0, "go")).outcome is Outcome.NEXT
    result = store.load_run("run").steps[0].tool_result
    assert result["error"] == "tool result too large [truncated: 100 of 502 bytes]"
    assert result["truncated"] == '"' + "y" * 99 + " [truncated: 100 of 502 bytes]"
