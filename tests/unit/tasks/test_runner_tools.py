"""A step's tool call past its deadline or with an oversized result: the step commits a tool
error for the model and the run goes on."""

from __future__ import annotations

import json

import fakeredis
import pytest
import redis.exceptions as redis_errors

from app.agents.registry import AgentRegistry, AgentSpec
from app.agents.sandbox import ToolSandbox
from app.config import LimitSettings, Settings
from app.constants import kv_key
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import steps as recorded
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
    results = [recorded.result(s) for s in store.load_run("run").steps]
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
    result = recorded.result(store.load_run("run").steps[0])
    assert result["error"] == "tool result too large [truncated: 100 of 502 bytes]"
    assert result["truncated"] == '"' + "y" * 99 + " [truncated: 100 of 502 bytes]"


TALLY = AgentRegistry([AgentSpec(name="tally", tools=("test_tally", "test_die"), max_steps=4)])


def tally_runner(store, backend, sandbox, worker="w1"):
    return StepRunner(
        Settings(), TALLY, store, fakeredis.FakeRedis(), {"triton": backend}, worker, sandbox
    )


def test_several_calls_in_one_reply_are_made_in_order_and_each_result_goes_back(store, sandbox):
    misbehaving.CALLS.clear()
    two = json.dumps([
        {"tool": "test_tally", "args": {"name": "a"}},
        {"tool": "test_tally", "args": {"name": "b", "times": 2}},
    ])  # fmt: skip
    backend = ReplyList(two, "Answer: both")
    runner = tally_runner(store, backend, sandbox)
    assert runner.run_step(StepMessage("run", "tally", 0, "go")).outcome is Outcome.NEXT
    assert runner.run_step(StepMessage("run", "tally", 1)).outcome is Outcome.DONE
    assert misbehaving.CALLS == [("a", 1), ("b", 2)]
    # The model is told of its agent's tools, each with its arguments' schema, every step.
    told = backend.requests[0].tools
    assert [t.name for t in told] == ["test_tally", "test_die"]
    assert told[0].parameters["properties"]["times"]["type"] == "integer"
    assert told[0].parameters["required"] == ["name"]
    step = store.load_run("run").steps[0]
    assert [(c.id, c.name, c.args, c.result, c.error) for c in step.tool_calls] == [
        ("call_0", "test_tally", {"name": "a"}, "a x1", False),
        ("call_1", "test_tally", {"name": "b", "times": 2}, "b x2", False),
    ]
    second = backend.requests[1].messages
    assert [(m.role, m.tool_call_id, m.content) for m in second[-2:]] == [
        ("tool", "call_0", "a x1"),
        ("tool", "call_1", "b x2"),
    ]
    assert [c.id for c in second[-3].tool_calls] == ["call_0", "call_1"]


def test_a_step_whose_worker_died_between_two_calls_makes_only_the_second_again(store, sandbox):
    misbehaving.CALLS.clear()
    reply = json.dumps([
        {"tool": "test_tally", "args": {"name": "first"}},
        {"tool": "test_die", "args": {}},
    ])  # fmt: skip
    dying = tally_runner(store, ReplyList(reply), sandbox)
    with pytest.raises(misbehaving.WorkerDied):
        dying.run_step(StepMessage("run", "tally", 0, "go"))
    assert misbehaving.CALLS == [("first", 1)]
    kept = store.load_run("run")
    assert kept.next_step == 0 and kept.draft.results == {"call_0": ("first x1", False)}
    # The redelivered step: no model call (the list is empty), the first call not made again.
    with pytest.raises(misbehaving.WorkerDied):
        tally_runner(store, ReplyList(), sandbox, "w2").run_step(
            StepMessage("run", "tally", 0, "go")
        )
    assert misbehaving.CALLS == [("first", 1)]


def test_arguments_that_do_not_fit_the_schema_come_back_as_an_error_and_the_run_recovers(
    store, sandbox
):
    misbehaving.CALLS.clear()
    backend = ReplyList(
        call("test_tally", name="x", times="many"),
        call("test_tally", name="x", times=3),
        "Answer: fixed",
    )
    runner = tally_runner(store, backend, sandbox)
    for step in (0, 1):
        assert runner.run_step(StepMessage("run", "tally", step, "go")).outcome is Outcome.NEXT
    assert runner.run_step(StepMessage("run", "tally", 2)).outcome is Outcome.DONE
    bad, good, _ = store.load_run("run").steps
    assert bad.tool_calls[0].error and good.tool_calls[0].result == "x x3"
    assert "times" in bad.tool_calls[0].result["error"]
    assert misbehaving.CALLS == [("x", 3)]  # the bad call never reached the function
    assert '"error":' in backend.prompts[1].splitlines()[-2]  # the model saw why


def test_arguments_that_are_not_a_json_object_are_an_error_without_a_call(store, sandbox):
    from app.inference.chat import Completion, ToolCall

    misbehaving.CALLS.clear()
    broken = ToolCall("c9", "test_tally", {}, error="arguments are not JSON: '{name'")
    backend = ReplyList(Completion("", 1, 1, 0.0, "fake", (broken,)), "Answer: ok")
    runner = tally_runner(store, backend, sandbox)
    assert runner.run_step(StepMessage("run", "tally", 0, "go")).outcome is Outcome.NEXT
    [made] = store.load_run("run").steps[0].tool_calls
    assert (made.id, made.error) == ("c9", True)
    assert made.result == {
        "error": "invalid arguments for tool 'test_tally': arguments are not JSON: '{name'"
    }
    assert misbehaving.CALLS == []


def test_a_tool_that_finds_redis_down_retries_the_step_instead_of_telling_the_model(store, sandbox):
    redis = fakeredis.FakeRedis()
    agents = AgentRegistry([AgentSpec(name="counter", tools=("test_kv_count",))])
    count = call("test_kv_count", key="k")
    down = StepRunner(Settings(), agents, store, redis, {"triton": ReplyList(count)}, "w1", sandbox)
    misbehaving.REDIS_DOWN.set()
    try:
        with pytest.raises(redis_errors.ConnectionError):  # the task retries it later
            down.run_step(StepMessage("run", "counter", 0, "go"))
    finally:
        misbehaving.REDIS_DOWN.clear()
    assert store.load_run("run").draft.results == {}  # nothing kept: the call is made again
    up = StepRunner(Settings(), agents, store, redis, {"triton": ReplyList()}, "w1", sandbox)
    assert up.run_step(StepMessage("run", "counter", 0, "go")).outcome is Outcome.NEXT
    assert recorded.result(store.load_run("run").steps[0]) == 1
