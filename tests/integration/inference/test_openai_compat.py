"""OpenAICompatBackend against a real local HTTP server speaking the OpenAI wire format.

The server (tests/fixtures/openai_server.py) answers as the scripted model, as Triton does.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from app.errors import InferenceError, InferenceUnavailableError
from app.inference.backend import GenerationParams, count_tokens
from app.inference.openai_compat import OpenAICompatBackend
from tests.fixtures.openai_server import OpenAIServer
from tests.fixtures.prompts import scripted_prompt

pytestmark = pytest.mark.integration

PARAMS = GenerationParams(max_tokens=512)


_prompt = scripted_prompt


def _wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def backend(server: OpenAIServer) -> Iterator[OpenAICompatBackend]:
    client = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
    yield client
    client.close()


def test_generate_answers_with_the_servers_usage(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    prompt = _prompt("hello   world")
    completion = backend.generate(prompt, PARAMS)
    assert completion.text == "Answer: HELLO WORLD"
    assert (completion.tokens_in, completion.tokens_out) == (count_tokens(prompt), 3)
    assert completion.replica == server.base_url
    assert server.last_body is not None
    assert server.last_body["model"] == "scripted"
    assert server.last_body["stream"] is False
    assert server.last_body["messages"][-1] == {"role": "user", "content": "hello   world"}


def test_generate_sends_the_sampling_params(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    params = GenerationParams(
        max_tokens=16, temperature=0.2, top_p=0.9, top_k=5, random_seed=3, stop_words=["END"]
    )
    backend.generate(_prompt("hi"), params)
    body = server.last_body
    assert body is not None
    sent = {k: body.get(k) for k in ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")}
    assert sent == {
        "max_tokens": 16,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 3,
        "stop": ["END"],
    }


def test_stream_yields_pieces_in_order_that_make_the_generated_text(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    prompt = _prompt("[words:6]")
    pieces = list(backend.stream(prompt, PARAMS))
    assert pieces == ["w1", " w2", " w3", " w4", " w5", " w6"]
    assert server.last_body is not None and server.last_body["stream"] is True
    assert "".join(pieces) == backend.generate(prompt, PARAMS).text


def test_tool_call_then_answer_with_its_result(backend: OpenAICompatBackend) -> None:
    user = 'add them [tool:calculator {"expression":"2+3"}]'
    call = backend.generate(_prompt(user), PARAMS)
    assert json.loads(call.text) == {"tool": "calculator", "args": {"expression": "2+3"}}
    assert "".join(backend.stream(_prompt(user), PARAMS)) == call.text
    assert backend.generate(_prompt(user, "5"), PARAMS).text == "Answer: 5"


def test_max_tokens_cuts_the_reply(backend: OpenAICompatBackend) -> None:
    params = GenerationParams(max_tokens=4)
    assert backend.generate(_prompt("[words:10]"), params).text == "w1 w2 w3 w4"
    assert list(backend.stream(_prompt("[words:10]"), params)) == ["w1", " w2", " w3", " w4"]


def test_model_error_is_not_retryable(backend: OpenAICompatBackend) -> None:
    with pytest.raises(InferenceError, match="boom") as raised:
        backend.generate(_prompt("[error:boom]"), PARAMS)
    assert not isinstance(raised.value, InferenceUnavailableError)
    with pytest.raises(InferenceError, match="boom") as raised:
        list(backend.stream(_prompt("[error:boom]"), PARAMS))
    assert not isinstance(raised.value, InferenceUnavailableError)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_overloaded_or_gateway_statuses_are_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer, status: int
) -> None:
    server.mode = f"http_{status}"
    with pytest.raises(InferenceUnavailableError, match=f"HTTP {status}"):
        backend.generate(_prompt("hi"), PARAMS)
    with pytest.raises(InferenceUnavailableError, match=f"HTTP {status}"):
        list(backend.stream(_prompt("hi"), PARAMS))


@pytest.mark.parametrize("status", [400, 404, 500])
def test_other_statuses_carry_the_servers_message(
    backend: OpenAICompatBackend, server: OpenAIServer, status: int
) -> None:
    server.mode = f"http_{status}"
    with pytest.raises(InferenceError, match=f"HTTP {status}.*scripted HTTP {status}") as raised:
        backend.generate(_prompt("hi"), PARAMS)
    assert not isinstance(raised.value, InferenceUnavailableError)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("error_in_200", "model crashed"), ("no_choices", "without choices")],
)
def test_errors_inside_http_200_are_recognised(
    backend: OpenAICompatBackend, server: OpenAIServer, mode: str, reason: str
) -> None:
    server.mode = mode
    with pytest.raises(InferenceError, match=reason) as raised:
        backend.generate(_prompt("hi"), PARAMS)
    assert not isinstance(raised.value, InferenceUnavailableError)
    with pytest.raises(InferenceError) as raised:
        list(backend.stream(_prompt("hi"), PARAMS))
    assert not isinstance(raised.value, InferenceUnavailableError)


def test_error_event_mid_stream_is_not_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    server.mode = "sse_error"
    received: list[str] = []
    with pytest.raises(InferenceError, match="failed mid-stream") as raised:
        for piece in backend.stream(_prompt("[words:5]"), PARAMS):
            received.append(piece)
    assert not isinstance(raised.value, InferenceUnavailableError)
    assert received == ["w1"]


@pytest.mark.parametrize("mode", ["cut", "truncated"])
def test_stream_ended_early_is_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer, mode: str
) -> None:
    server.mode = mode
    with pytest.raises(InferenceUnavailableError):
        list(backend.stream(_prompt("[words:5]"), PARAMS))


def test_reply_cut_mid_body_is_retryable(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    server.mode = "cut"
    with pytest.raises(InferenceUnavailableError):
        backend.generate(_prompt("hi"), PARAMS)
    server.mode = "ok"
    assert backend.generate(_prompt("hi"), PARAMS).text == "Answer: HI"


def test_closed_port_is_unavailable_and_unhealthy() -> None:
    with OpenAIServer() as stopped:
        url = stopped.base_url
    backend = OpenAICompatBackend(url, "scripted", timeout_s=5)
    try:
        with pytest.raises(InferenceUnavailableError, match="connection failed"):
            backend.generate(_prompt("hi"), PARAMS)
        with pytest.raises(InferenceUnavailableError):
            list(backend.stream(_prompt("hi"), PARAMS))
        assert backend.health() is False
    finally:
        backend.close()


def test_call_timeout_overrides_the_default(backend: OpenAICompatBackend) -> None:
    started = time.monotonic()
    with pytest.raises(InferenceUnavailableError, match="no reply in time"):
        backend.generate(_prompt("[delay:3000] hi"), PARAMS, timeout_s=0.3)
    with pytest.raises(InferenceUnavailableError):
        list(backend.stream(_prompt("[delay:3000] hi"), PARAMS, timeout_s=0.3))
    assert time.monotonic() - started < 2.5


def test_api_key_is_sent_as_bearer_and_kept_out_of_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with OpenAIServer(require_key="sk-right-key") as server:
        good = OpenAICompatBackend(server.base_url, "scripted", api_key="sk-right-key")
        bad = OpenAICompatBackend(server.base_url, "scripted", api_key="sk-wrong-secret")
        try:
            assert good.generate(_prompt("hi"), PARAMS).text == "Answer: HI"
            assert server.last_headers["authorization"] == "Bearer sk-right-key"
            assert good.health() is True
            # The server echoes the refused key in its 401 message, as OpenAI does.
            with pytest.raises(InferenceError, match="HTTP 401") as raised:
                bad.generate(_prompt("hi"), PARAMS)
            assert not isinstance(raised.value, InferenceUnavailableError)
            assert server.last_headers["authorization"] == "Bearer sk-wrong-secret"
            with pytest.raises(InferenceError, match="HTTP 401") as streamed:
                list(bad.stream(_prompt("hi"), PARAMS))
            assert bad.health() is False
        finally:
            good.close()
            bad.close()
    for text in (str(raised.value), str(streamed.value), repr(bad), caplog.text):
        assert "sk-wrong-secret" not in text
        assert "sk-right-key" not in text


def test_health(backend: OpenAICompatBackend, server: OpenAIServer) -> None:
    assert backend.health() is True
    server.stop()
    assert backend.health() is False


def test_64_concurrent_calls_are_all_served(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    def call(i: int) -> str:
        return backend.generate(_prompt(f"q{i} [delay:300]"), PARAMS).text

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=64) as pool:
        answers = list(pool.map(call, range(64)))
    assert answers == [f"Answer: Q{i}" for i in range(64)]
    assert server.requests == 64
    assert time.monotonic() - started < 5  # one after another would take 19 s


def test_metrics_report_requests_in_flight(
    backend: OpenAICompatBackend, server: OpenAIServer
) -> None:
    def waiting() -> str:
        return httpx.get(f"{server.root_url}/metrics").text

    calls = [
        threading.Thread(target=backend.generate, args=(_prompt(f"[delay:1000] {i}"), PARAMS))
        for i in range(3)
    ]
    for call in calls:
        call.start()
    try:
        assert _wait_for(
            lambda: 'vllm:num_requests_waiting{model_name="scripted"} 3.0' in waiting()
        )
        assert 'vllm:num_requests_running{model_name="scripted"} 0.0' in waiting()
    finally:
        for call in calls:
            call.join()
    assert _wait_for(lambda: server.in_flight == 0)  # the server counts down after replying


def test_stopping_a_stream_early_closes_its_connection() -> None:
    with OpenAIServer(token_delay_s=0.01) as server:
        client = OpenAICompatBackend(server.base_url, server.model)
        try:
            pieces = client.stream(_prompt("[words:500]"), PARAMS)
            assert [next(pieces) for _ in range(3)] == ["w1", " w2", " w3"]
            pieces.close()
            assert _wait_for(lambda: server.streams_aborted == 1)
            assert _wait_for(lambda: server.in_flight == 0)
            assert client.generate(_prompt("again"), PARAMS).text == "Answer: AGAIN"
        finally:
            client.close()


def test_a_client_passed_in_stays_open(server: OpenAIServer) -> None:
    with httpx.Client() as http:
        backend = OpenAICompatBackend(server.base_url, server.model, client=http)
        backend.close()
        assert backend.generate(_prompt("hi"), PARAMS).text == "Answer: HI"
