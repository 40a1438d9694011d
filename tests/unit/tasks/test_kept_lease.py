"""A done run's lease can go back with its answer (one round trip), and is never left held."""

from __future__ import annotations

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.errors import NoSuchRunError
from app.inference.echo import EchoBackend
from app.memory.sessions import SessionStore
from app.tasks.leases import RunLease
from app.tasks.runner import Outcome, StepMessage, StepRunner


@pytest.fixture
def runner(tmp_path):
    store = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    registry = AgentRegistry([AgentSpec(name="trivial", backend="echo")])
    redis = fakeredis.FakeRedis()
    yield StepRunner(Settings(), registry, store, redis, {"echo": EchoBackend()}, "w1")
    store.close()


def test_a_done_run_keeps_its_lease_until_the_pipeline_gives_it_back(runner) -> None:
    result = runner.run_step(StepMessage("r1", "trivial", 0, "hi"), keep_lease=True)
    assert result.outcome is Outcome.DONE and result.lease is not None
    lease = RunLease(runner.redis)
    assert lease.holder("r1") == result.lease and runner.leases.held == {result.lease: "r1"}
    with (
        runner.redis.pipeline(transaction=False) as pipe,
        runner.leases.releasing("r1", result.lease, pipe),
    ):
        pipe.set("answer", "hi")
        pipe.execute()
    assert lease.holder("r1") is None and runner.leases.held == {}
    runner.leases.release("r1", result.lease)  # already given back: nothing happens


def test_other_outcomes_and_plain_calls_release_at_once(runner) -> None:
    plain = runner.run_step(StepMessage("r2", "trivial", 0, "hi"))
    assert plain.outcome is Outcome.DONE and plain.lease is None
    with pytest.raises(NoSuchRunError):  # a later step of a run never started
        runner.run_step(StepMessage("r3", "trivial", 5), keep_lease=True)
    lease = RunLease(runner.redis)
    assert lease.holder("r2") is None and lease.holder("r3") is None and runner.leases.held == {}


def test_a_failed_pipeline_leaves_the_lease_to_release(runner) -> None:
    result = runner.run_step(StepMessage("r4", "trivial", 0, "hi"), keep_lease=True)
    assert result.lease is not None
    with (
        pytest.raises(RuntimeError),
        runner.redis.pipeline() as pipe,
        runner.leases.releasing("r4", result.lease, pipe),
    ):
        raise RuntimeError("Redis went away before execute")
    assert runner.leases.held == {result.lease: "r4"}
    runner.leases.release("r4", result.lease)
    assert RunLease(runner.redis).holder("r4") is None


def test_a_pipeline_that_meets_a_flushed_script_still_gives_the_lease_back(runner) -> None:
    result = runner.run_step(StepMessage("r5", "trivial", 0, "hi"), keep_lease=True)
    assert result.lease is not None
    runner.redis.script_flush()  # Redis restarted, or SCRIPT FLUSH: the release script is gone
    with (
        runner.redis.pipeline(transaction=False) as pipe,
        runner.leases.releasing("r5", result.lease, pipe),
    ):
        pipe.set("answer", "hi")
        pipe.execute()
    assert runner.redis.get("answer") == b"hi"
    assert RunLease(runner.redis).holder("r5") is None and runner.leases.held == {}
