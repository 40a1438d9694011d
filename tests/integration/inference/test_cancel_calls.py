"""A model call in flight is aborted when its run is cancelled (the ``cancel`` event is set):
the call raises ModelCallCancelledError and the server stops generating.

Triton: the scripted models check ``request.is_cancelled()`` while they wait or stream and
count on Triton's /metrics the requests they stopped and the tokens they streamed, so these
tests see the server side. OpenAI-compatible: the strict test server counts the streams whose
client went away, and its open connections.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from app.config import Settings
from app.errors import ModelCallCancelledError
from app.inference.backend import ChatRequest, GenerationParams
from app.inference.openai_compat import OpenAICompatBackend
from app.inference.triton import TritonBackend
from app.local.triton import TritonServer, install_triton
from bench.measure import bench_repository
from tests.fixtures.chats import scripted_request
from tests.fixtures.openai_server import OpenAIServer
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration

LONG_STREAM = "[pace:50][words:200]"  # 10 s of tokens
WORDS = 200


@pytest.fixture(scope="module", params=["batch", "inflight"])
def triton(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """A Triton of this module's own (its counters start at zero, whatever else ran), serving
    the scripted models with each scheduling: the repository's and the inference bench's."""
    settings = Settings().triton
    tmp = tmp_path_factory.mktemp(f"triton-cancel-{request.param}")
    repo = bench_repository(settings.model_repository, tmp / "models", 0, 64, request.param)
    server = TritonServer(install_triton(settings.home), repo, log_path=tmp / "triton.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def backend(triton: TritonServer) -> Iterator[TritonBackend]:
    client = TritonBackend(triton.grpc_url, timeout_s=30)
    yield client
    client.close()


def counter(server: TritonServer, name: str, model: str) -> float:
    """A counter on Triton's /metrics: the scripted model's own, or Triton's (version 1)."""
    text = httpx.get(server.metrics_url, timeout=5).text
    labels = rf'model="{model}"(?:,version="1")?'
    match = re.search(rf"^{name}{{{labels}}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def cancel_after(pieces: int, cancel: threading.Event) -> Callable[[int], None]:
    """Sets ``cancel`` once ``pieces`` pieces were read."""

    def read(n: int) -> None:
        if n >= pieces:
            cancel.set()

    return read


def test_a_cancelled_stream_raises_and_triton_stops_generating(
    backend: TritonBackend, triton: TritonServer
) -> None:
    cancelled_before = counter(triton, "scripted_requests_cancelled", "ensemble_stream")
    sent_before = counter(triton, "scripted_tokens_sent", "ensemble_stream")
    served_before = counter(triton, "nv_inference_request_success", "ensemble_stream")
    busy_before = counter(triton, "nv_inference_compute_infer_duration_us", "ensemble_stream")
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    read: list[str] = []
    timer.start()
    try:
        with pytest.raises(ModelCallCancelledError):
            for delta in backend.stream(scripted_request(LONG_STREAM), cancel=cancel):
                read.append(delta.text)
    finally:
        timer.cancel()
    assert cancel.is_set() and 0 < len(read) < WORDS
    # The model saw the request cancelled and stopped: it never sent the rest.
    wait_for(
        lambda: (
            counter(triton, "scripted_requests_cancelled", "ensemble_stream")
            == cancelled_before + 1
        ),
        10,
        "the scripted model to stop the cancelled stream",
    )
    sent = counter(triton, "scripted_tokens_sent", "ensemble_stream") - sent_before
    assert len(read) <= sent < WORDS
    # Its instance was freed too: busy for less than the 10 s the whole stream takes.
    wait_for(
        lambda: (
            counter(triton, "nv_inference_request_success", "ensemble_stream") == served_before + 1
        ),
        15,
        "Triton to count the stream's request",
    )
    busy_us = counter(triton, "nv_inference_compute_infer_duration_us", "ensemble_stream")
    assert busy_us - busy_before < 10_000_000
    # The backend still serves.
    assert "".join(d.text for d in backend.stream(scripted_request("[words:3]"))) == "w1 w2 w3"


def test_a_cancelled_unary_call_raises_and_triton_cancels_the_request(
    backend: TritonBackend, triton: TritonServer
) -> None:
    before = counter(triton, "scripted_requests_cancelled", "ensemble")
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    try:
        with pytest.raises(ModelCallCancelledError):
            backend.generate(scripted_request("[delay:3000] slow"), cancel=cancel)
    finally:
        timer.cancel()
    # Batch scheduling ends the delay at once; in-flight scheduling looks when the reply is
    # due. Without the cancellation the model answers, uncounted.
    wait_for(
        lambda: counter(triton, "scripted_requests_cancelled", "ensemble") == before + 1,
        15,
        "the scripted model to drop the cancelled request",
    )
    assert backend.generate(scripted_request("hi")).text == "Answer: HI"


def test_a_call_whose_run_is_already_cancelled_is_not_made(
    backend: TritonBackend, triton: TritonServer
) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ModelCallCancelledError):
        backend.generate(scripted_request("hi"), cancel=cancel)
    with pytest.raises(ModelCallCancelledError):
        next(iter(backend.stream(scripted_request("hi"), cancel=cancel)))


def test_an_unset_cancel_event_changes_nothing(backend: TritonBackend) -> None:
    cancel = threading.Event()
    assert backend.generate(scripted_request("hello"), cancel=cancel).text == "Answer: HELLO"
    streamed = backend.stream(scripted_request("[words:4]"), cancel=cancel)
    assert "".join(d.text for d in streamed) == "w1 w2 w3 w4"


# ---- OpenAI-compatible server ----


def ask(user: str) -> ChatRequest:
    return ChatRequest.of_prompt(user, GenerationParams(max_tokens=512))


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer("scripted") as s:
        yield s


def test_a_cancelled_openai_stream_closes_its_connection(server: OpenAIServer) -> None:
    backend = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
    cancel = threading.Event()
    timer = threading.Timer(0.5, cancel.set)
    read: list[str] = []
    timer.start()
    try:
        with pytest.raises(ModelCallCancelledError):
            for delta in backend.stream(ask(LONG_STREAM), cancel=cancel):
                read.append(delta.text)
    finally:
        timer.cancel()
        backend.close()
    assert 0 < len(read) < WORDS
    # The server's next write found the connection gone: it stopped streaming.
    wait_for(lambda: server.streams_aborted == 1, 5, "the server to see the client go")


def test_a_cancelled_openai_call_closes_its_connection_while_waiting(
    server: OpenAIServer,
) -> None:
    backend = OpenAICompatBackend(server.base_url, server.model, timeout_s=30)
    cancel = threading.Event()
    try:
        # A kept-alive connection first, so the cancelled call reuses it.
        assert backend.generate(ask("warm up")).text == "Answer: WARM UP"
        timer = threading.Timer(0.5, cancel.set)
        timer.start()
        with pytest.raises(ModelCallCancelledError):
            backend.generate(ask("[delay:10000] slow"), cancel=cancel)
        assert server.in_flight == 1  # the server is still in its delay: the client did not wait
        # The socket was shut: the server's handler sees the connection closed, not idle.
        wait_for(lambda: server.peer_closed() == 1, 5, "the server to see the connection shut")
        assert backend.generate(ask("again")).text == "Answer: AGAIN"
    finally:
        backend.close()
