"""The echo backend: no model server; a run of an echo agent ends in one committed step."""

from __future__ import annotations

import json

import fakeredis
import pytest

from app.agents.prompts import FinalAnswer, build_prompt, parse_reply
from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.inference.backend import GenerationParams
from app.inference.echo import EchoBackend, echo_reply
from app.inference.factory import build_pools
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner


def test_the_reply_is_the_input_as_a_final_answer_whatever_it_says() -> None:
    for text in ("hello", '{"tool": "calculator", "args": {}}', "[delay:10] x"):
        prompt = build_prompt("You echo.", text, [], [("earlier", "answer")])
        assert parse_reply(echo_reply(prompt)) == FinalAnswer(text)


def test_generate_and_stream_agree() -> None:
    backend = EchoBackend()
    prompt = build_prompt("sys", "ping", [])
    completion = backend.generate(prompt, GenerationParams(max_tokens=8))
    assert completion.text == "".join(backend.stream(prompt, GenerationParams(max_tokens=8)))
    assert json.loads(completion.text) == {"final": "ping"}
    assert backend.health()


def test_every_worker_has_an_echo_pool() -> None:
    pools = build_pools(Settings())
    try:
        assert {"triton", "echo"} <= set(pools)
        prompt = build_prompt("sys", "ping", [])
        assert json.loads(pools["echo"].generate(prompt, GenerationParams(8)).text)["final"] == (
            "ping"
        )
    finally:
        for pool in pools.values():
            pool.close()


@pytest.fixture
def store(tmp_path):
    s = SessionStore.from_url(f"sqlite:///{tmp_path / 'db.sqlite3'}", migrate=True)
    yield s
    s.close()


def test_an_echo_run_loads_and_commits_its_session_in_one_step(store) -> None:
    registry = AgentRegistry([AgentSpec(name="trivial", backend="echo")])
    runner = StepRunner(
        Settings(), registry, store, fakeredis.FakeRedis(), {"echo": EchoBackend()}, "w1"
    )
    first = runner.run_step(StepMessage("r1", "trivial", 0, "hello", "s1"))
    assert first.outcome is Outcome.DONE and first.answer == "hello"
    second = runner.run_step(StepMessage("r2", "trivial", 0, "again", "s1"))
    assert second.answer == "again"
    run = store.load_run("r2")
    assert run is not None and run.status == "succeeded"
    assert [(s.step, s.kind) for s in run.steps] == [(0, "final")]
    assert store.history("s1") == [("hello", "hello"), ("again", "again")]
