"""Token counts of OpenAI streams come from the server's usage chunk (``include_usage``), over
the strict local server (tests/fixtures/openai_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.inference.chat import ChatRequest, Delta, GenerationParams, Message
from app.inference.openai_compat import OpenAICompatBackend
from tests.fixtures.openai_server import OpenAIServer, messages_to_prompt

pytestmark = pytest.mark.integration

ASK = ChatRequest(
    (Message("system", "you are scripted"), Message("user", "[words:7] count")),
    GenerationParams(max_tokens=64),
)


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


def test_a_stream_is_counted_from_the_servers_usage_chunk(server: OpenAIServer) -> None:
    backend = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
    try:
        deltas = list(backend.stream(ASK))
    finally:
        backend.close()
    body = server.last_body
    assert body["stream_options"] == {"include_usage": True}
    text = "".join(d.text for d in deltas)
    assert text == "w1 w2 w3 w4 w5 w6 w7"
    # The server's own count (its words), not one made by the client.
    prompt_tokens = len(messages_to_prompt(body["messages"]).split())
    assert deltas[-1] == Delta(tokens_in=prompt_tokens, tokens_out=7, counted="server")
    assert prompt_tokens != ASK.estimated_tokens()  # so the test tells the two apart


def test_the_strict_server_sends_usage_only_when_asked(server: OpenAIServer) -> None:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": "[words:3] go"}],
        "stream": True,
    }
    with httpx.Client(timeout=30) as client:
        plain = client.post(f"{server.base_url}/chat/completions", json=body).text
        asked = client.post(
            f"{server.base_url}/chat/completions",
            json={**body, "stream_options": {"include_usage": True}},
        ).text
    assert '"usage"' not in plain
    assert '"choices": [], "usage": {"prompt_tokens"' in asked


@pytest.mark.parametrize(
    "options",
    [{"include_usage": "yes"}, {"include_usage": True, "usage_every": 3}, ["include_usage"]],
)
def test_the_strict_server_refuses_bad_stream_options(
    server: OpenAIServer, options: object
) -> None:
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": options,
    }
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    assert "stream_options" in response.text
