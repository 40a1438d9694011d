"""The echo backend: no model server; a run of an echo agent ends in one committed step."""

from __future__ import annotations

import json

import fakeredis
import pytest

from app.agents.registry import AgentRegistry, AgentSpec
from app.config import Settings
from app.inference.backend import ChatRequest, GenerationParams, Message
from app.inference.echo import EchoBackend
from app.inference.factory import build_pools
from app.memory.sessions import SessionStore
from app.tasks.runner import Outcome, StepMessage, StepRunner

PARAMS = GenerationParams(max_tokens=8)


def conversation(text: str) -> ChatRequest:
    """A later run of a session, one tool call in: the input is the last user turn."""
    return ChatRequest(
        (
            Message("system", "You echo."),
            Message("user", "earlier"),
            Message("assistant", "answer"),
            Message("user", text),
            Message("assistant", '{"tool": "calculator"}'),
            Message("tool", "5", tool_call_id="call_0"),
        ),
        PARAMS,
    )


def test_the_reply_is_the_last_user_turn_as_a_final_answer_whatever_it_says() -> None:
    backend = EchoBackend()
    for text in ("hello", '{"tool": "calculator", "args": {}}', "[delay:10] x", "two\nlines"):
        completion = backend.generate(conversation(text))
        assert json.loads(completion.text) == {"final": text}
        assert completion.tool_calls == ()


def test_generate_and_stream_agree() -> None:
    backend = EchoBackend()
    request = ChatRequest.of_prompt("ping", PARAMS)
    completion = backend.generate(request)
    assert completion.text == "".join(d.text for d in backend.stream(request))
    assert json.loads(completion.text) == {"final": "ping"}
    assert backend.health()
    assert backend.missing_models(["any", "model"]) == []


def test_every_worker_has_an_echo_pool() -> None:
    pools = build_pools(Settings())
    try:
        assert {"triton", "echo"} <= set(pools)
        reply = pools["echo"].generate(ChatRequest.of_prompt("ping", PARAMS))
        assert json.loads(reply.text)["final"] == "ping"
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
