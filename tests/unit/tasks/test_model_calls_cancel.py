"""ModelCalls.reply hands the run's cancel event to the backend, and a streamed reply stops
being relayed once the run is cancelled."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import fakeredis
import pytest

from app.agents.registry import AgentSpec
from app.config import Settings
from app.constants import stream_key
from app.errors import ModelCallCancelledError
from app.inference.chat import ChatRequest, Completion, Delta, GenerationParams
from app.memory.response_cache import ResponseCache
from app.tasks.model_calls import ModelCalls
from app.tasks.relay import TokenRelay
from app.tasks.steps import StepMessage


class Model:
    """A backend that records the ``cancel`` it is given; its stream sets it after two pieces
    (the run's cancellation arriving) and, as a backend that does not check, goes on."""

    def __init__(self) -> None:
        self.cancels: list[threading.Event | None] = []
        self.closed = False

    def generate(self, request: ChatRequest, *, route=None, timeout_s=None, cancel=None):
        self.cancels.append(cancel)
        return Completion("done", 1, 1, 0.0, "model")

    def stream(self, request: ChatRequest, *, route=None, timeout_s=None, cancel=None):
        self.cancels.append(cancel)
        return self._pieces(cancel)

    def _pieces(self, cancel: threading.Event | None) -> Iterator[Delta]:
        try:
            for i in range(10):
                if i == 2 and cancel is not None:
                    cancel.set()
                yield Delta(f"w{i} ")
        finally:
            self.closed = True


@pytest.fixture
def calls() -> tuple[ModelCalls, Model, fakeredis.FakeRedis]:
    settings = Settings(_env_file=None)
    redis = fakeredis.FakeRedis()
    model = Model()
    relay = TokenRelay(redis, settings.stream)
    responses = ResponseCache(redis, settings.cache)
    return ModelCalls(settings, {"triton": model}, relay, responses, {}), model, redis


SPEC = AgentSpec(name="a", backend="triton")
REQUEST = ChatRequest.of_prompt("hi", GenerationParams(max_tokens=8))


def test_the_cancel_event_reaches_the_backend(calls) -> None:
    model_calls, model, _ = calls
    cancel = threading.Event()
    msg = StepMessage("r1", "a", 0)
    assert model_calls.reply(SPEC, msg, REQUEST, None, cancel=cancel).text == "done"
    assert model_calls.reply(SPEC, msg, REQUEST, None).text == "done"
    assert model.cancels == [cancel, None]


def test_a_cancelled_stream_stops_being_relayed_and_is_closed(calls) -> None:
    model_calls, model, redis = calls
    cancel = threading.Event()
    msg = StepMessage("r1", "a", 0, stream=True)
    with pytest.raises(ModelCallCancelledError):
        model_calls.reply(SPEC, msg, REQUEST, None, cancel=cancel)
    assert model.cancels == [cancel]
    relayed = [fields for _, fields in redis.xrange(stream_key(msg.tenant, "r1"))]
    tokens = [f for f in relayed if b"w" in b"".join(f.values())]
    assert len(tokens) == 2  # w0, w1: nothing after the cancellation
    assert model.closed
