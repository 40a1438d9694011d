"""The step state machine: what a worker does with fresh, redelivered and duplicate messages."""

from __future__ import annotations

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.errors import InferenceError, InferenceUnavailableError, NoSuchRunError
from app.memory.sessions import SessionStore
from app.tasks.leases import RunLease
from app.tasks.runner import Outcome, StepMessage, StepRunner
from tests.fixtures import steps as recorded
from tests.fixtures.backends import CALC, ReplyList

REGISTRY = AgentRegistry(
    [
        AgentSpec(name="research", tools=("calculator",), max_steps=3),
        AgentSpec(name="tiny", max_input_bytes=10),
    ]
)


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


def runner(store, backend, redis=None):
    return StepRunner(
        Settings(), REGISTRY, store, redis or fakeredis.FakeRedis(), {"triton": backend}, "w1"
    )


def test_a_run_goes_tool_then_final(store):
    backend = ReplyList(CALC, "Answer: 5")
    r = runner(store, backend)
    first = r.run_step(StepMessage("run", "research", 0, "add", "s1"))
    assert first.outcome is Outcome.NEXT and first.next_step == 1
    done = r.run_step(StepMessage("run", "research", 1, session_id="s1"))
    assert done.outcome is Outcome.DONE and done.answer == "Answer: 5"
    assert backend.prompts[1].splitlines()[-2] == "Tool: 5"
    run = store.load_run("run")
    assert [(s.step, s.kind, recorded.result(s), s.replica) for s in run.steps] == [
        (0, "tool", 5, "fake"),
        (1, "final", None, "fake"),
    ]
    assert run.traceback is None


def test_redelivered_and_duplicate_messages_never_repeat_a_step(store):
    backend = ReplyList(CALC)
    r = runner(store, backend)
    assert r.run_step(StepMessage("run", "research", 0, "add")).outcome is Outcome.NEXT
    # Step 0 redelivered after its commit: hand the run on, no model call.
    again = r.run_step(StepMessage("run", "research", 0, "add"))
    assert again.outcome is Outcome.REPUBLISH and again.next_step == 1
    # A message for a step ahead of the run is a stray duplicate.
    assert r.run_step(StepMessage("run", "research", 2)).outcome is Outcome.SKIP
    assert len(backend.prompts) == 1
    assert store.count_steps("run") == 1


def test_a_later_step_of_a_run_never_started_is_refused_and_commits_nothing(store):
    backend = ReplyList("Answer: ok")
    r = runner(store, backend)
    with pytest.raises(NoSuchRunError, match="no run 'ghost': step 1 of a run that was never"):
        r.run_step(StepMessage("ghost", "research", 1))
    assert backend.prompts == [] and store.load_run("ghost") is None
    # A redelivered step 0 whose first delivery died before its commit still starts the run.
    assert r.run_step(StepMessage("late", "research", 0, "hi")).outcome is Outcome.DONE


def test_a_finished_run_answers_again_without_work(store):
    backend = ReplyList("Answer: ok")
    r = runner(store, backend)
    assert r.run_step(StepMessage("run", "research", 0, "hi")).answer == "Answer: ok"
    replay = r.run_step(StepMessage("run", "research", 0, "hi"))
    assert replay.outcome is Outcome.DONE and replay.answer == "Answer: ok"
    assert len(backend.prompts) == 1


def test_a_leased_run_is_busy_and_the_lease_is_released_after_a_step(store):
    redis = fakeredis.FakeRedis()
    RunLease(redis).acquire("run", "other-worker", ttl_s=30)
    r = runner(store, ReplyList("Answer: ok"), redis)
    assert r.run_step(StepMessage("run", "research", 0, "hi")).outcome is Outcome.BUSY
    RunLease(redis).release("run", "other-worker")
    assert r.run_step(StepMessage("run", "research", 0, "hi")).outcome is Outcome.DONE
    assert RunLease(redis).holder("run") is None


def test_a_tool_outside_the_allowlist_is_an_error_result_not_a_call(store):
    backend = ReplyList('{"tool": "kv_set", "args": {"key": "k", "value": "v"}}', "Answer: no")
    redis = fakeredis.FakeRedis()
    r = runner(store, backend, redis)
    r.run_step(StepMessage("run", "research", 0, "hi"))
    step = store.load_run("run").steps[0]
    assert step.kind == "denied"
    assert recorded.result(step) == {"error": "tool 'kv_set' is not allowed for agent 'research'"}
    assert not redis.keys("agentq:kv:*")
    # The run goes on: the model sees the refusal and answers.
    assert r.run_step(StepMessage("run", "research", 1)).outcome is Outcome.DONE


def test_the_step_budget_ends_the_run(store):
    r = runner(store, ReplyList(CALC, CALC, CALC))
    outcomes = [r.run_step(StepMessage("run", "research", i, "loop")).outcome for i in range(3)]
    assert outcomes == [Outcome.NEXT, Outcome.NEXT, Outcome.FAILED]
    run = store.load_run("run")
    assert run.status == "failed" and "step budget of 3" in run.error
    assert run.error_type == "budget_exceeded"


def test_a_model_error_fails_the_run_and_unavailability_commits_nothing(store):
    r = runner(store, ReplyList(InferenceUnavailableError("down"), InferenceError("bad prompt")))
    with pytest.raises(InferenceUnavailableError):
        r.run_step(StepMessage("run", "research", 0, "hi"))
    assert store.count_steps("run") == 0
    failed = r.run_step(StepMessage("run", "research", 0, "hi"))
    assert failed.outcome is Outcome.FAILED and "bad prompt" in failed.reason
    run = store.load_run("run")
    assert run.steps[0].kind == "error"
    assert run.traceback.startswith("Traceback (most recent call last):")
    assert run.traceback.rstrip().endswith("InferenceError: bad prompt")


def test_oversized_input_from_send_task_fails_at_the_worker(store):
    backend = ReplyList()
    result = runner(store, backend).run_step(StepMessage("run", "tiny", 0, "x" * 50))
    assert result.outcome is Outcome.FAILED and "the limit is 10" in result.reason
    assert backend.prompts == []


def test_unknown_agent_fails_without_touching_the_store(store):
    result = runner(store, ReplyList()).run_step(StepMessage("run", "ghost", 0, "hi"))
    assert result.outcome is Outcome.FAILED and "ghost" in result.reason
    assert store.load_run("run") is None


class CountingStore:
    """The store, counting its loads."""

    def __init__(self, store: SessionStore) -> None:
        self.store, self.loads = store, 0

    def load_run(self, run_id):
        self.loads += 1
        return self.store.load_run(run_id)

    def __getattr__(self, name):
        return getattr(self.store, name)


def first(run_id: str, text: str = "add") -> StepMessage:
    """Step 0 as submitted, on its first delivery."""
    return StepMessage(run_id, "research", 0, text, first=True)


def test_a_first_delivery_commits_a_final_answer_without_loading_the_run(store):
    counting = CountingStore(store)
    result = runner(counting, ReplyList("Answer: 5")).run_step(first("run"))
    assert result.outcome is Outcome.DONE and result.answer == "Answer: 5"
    assert counting.loads == 0
    assert store.load_run("run").status == "succeeded"


def test_a_first_delivery_loads_before_a_tool_call(store):
    counting = CountingStore(store)
    result = runner(counting, ReplyList(CALC)).run_step(first("run"))
    assert result.outcome is Outcome.NEXT and counting.loads == 1
    assert [recorded.result(s) for s in store.load_run("run").steps] == [5]


def test_a_duplicate_of_a_first_message_neither_repeats_its_tool_nor_ends_the_run(store):
    calls: list[str] = []
    redis = fakeredis.FakeRedis()
    r = runner(store, ReplyList(CALC, CALC), redis)
    assert r.run_step(first("run")).outcome is Outcome.NEXT
    redis.flushall()  # no cached tool result to fall back on
    r._call_tool = lambda *args: calls.append("tool")  # type: ignore[method-assign]
    again = r.run_step(first("run"))  # e.g. published twice by a producer's retry
    assert (again.outcome, again.next_step, calls) == (Outcome.REPUBLISH, 1, [])

    # A finished run: its duplicate answers again (model error or not), never fails it.
    done = runner(store, ReplyList("Answer: 7")).run_step(first("other"))
    assert done.outcome is Outcome.DONE
    dup = runner(store, ReplyList(InferenceError("model broke"))).run_step(first("other"))
    assert (dup.outcome, dup.answer) == (Outcome.DONE, "Answer: 7")
    dup = runner(store, ReplyList("Answer: 8")).run_step(first("other"))
    assert (dup.outcome, dup.answer) == (Outcome.DONE, "Answer: 7")
    assert store.load_run("other").answer == "Answer: 7"


def test_a_first_delivery_takes_the_lease_only_for_a_tool_call(store):
    redis = fakeredis.FakeRedis()
    RunLease(redis).acquire("held", "a copy elsewhere", 60)
    calls: list[str] = []
    r = runner(store, ReplyList("Answer: 5", CALC), redis)
    # No tool: nothing the commit does not guard, so a lease held elsewhere does not stop it.
    done = r.run_step(first("run"), keep_lease=True)
    assert (done.outcome, done.lease) == (Outcome.DONE, None)
    assert RunLease(redis).holder("run") is None and r.leases.held == {}
    # A tool call waits for the lease: the copy that holds it may be calling the tool now.
    r._call_tool = lambda *args: calls.append("tool")  # type: ignore[method-assign]
    busy = r.run_step(first("held"))
    assert busy.outcome is Outcome.BUSY and calls == []
    assert store.load_run("held") is None  # nothing committed: the message comes back


def test_a_first_delivery_with_a_tool_call_gives_its_lease_back(store):
    redis = fakeredis.FakeRedis()
    r = runner(store, ReplyList(CALC), redis)
    result = r.run_step(first("run"), keep_lease=True)
    assert result.outcome is Outcome.NEXT and result.lease is None
    assert RunLease(redis).holder("run") is None and r.leases.held == {}
    # Any other message takes the lease first: held elsewhere, it waits.
    RunLease(redis).acquire("run", "a copy elsewhere", 60)
    assert r.run_step(StepMessage("run", "research", 1)).outcome is Outcome.BUSY
