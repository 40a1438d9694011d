"""The scripted model's two schedulings on a real tritonserver.

``batch`` (the repository's default): two instances, each answering together what queued
while it was busy, so a call can wait for another's delay. ``inflight`` (the inference
bench's): each call answered its delay after it arrived, whatever else runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from app.config import Settings
from app.errors import InferenceError
from app.inference.backend import ChatRequest
from app.inference.triton import TritonBackend
from app.local.triton import TritonServer, install_triton
from bench.measure import bench_repository
from tests.fixtures.chats import scripted_request

pytestmark = pytest.mark.integration

LONG = scripted_request("slow [delay:3000]")


@pytest.fixture(scope="module")
def inflight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """tritonserver serving a copy of models/scripted with ``scheduling: inflight``."""
    tmp = tmp_path_factory.mktemp("inflight")
    settings = Settings().triton
    repo = bench_repository(settings.model_repository, tmp / "models", 0, 64, "inflight")
    server = TritonServer(install_triton(settings.home), repo, log_path=tmp / "triton.log")
    server.start()
    yield server
    server.stop()


def _client(server: TritonServer) -> TritonBackend:
    return TritonBackend(server.grpc_url, timeout_s=30)


def _answer(client: TritonBackend, request: ChatRequest) -> str:
    return client.generate(request).text


def _short_call_beside_two_long_ones(
    server: TritonServer, *, longs_first: bool = False, waited: list[float] | None = None
) -> tuple[str, list[Future[str]]]:
    """Two 3 s calls sent apart (one per instance in batch mode), then a quick one: its answer
    and the long calls' futures as they stood when it came back.

    On a loaded machine the calls can reach Triton in another order than they were sent: the
    first long call after the second (one batch instance then takes both together), or the
    second long call after the quick one (which then finds an instance free). Such a run did
    not set the scene, so it is tried again (at most three times) until the long calls end
    apart, as two instances answer them, and, with ``longs_first``, the later long call ends
    less than 2 s after the quick one came back: one that reached Triton after it would end
    its whole 3 s delay later. ``waited`` gets how long each try's quick call took."""
    for _ in range(3):
        quick, pending, longs_ended, quick_ended = _one_try(
            server, [] if waited is None else waited
        )
        apart = abs(longs_ended[1] - longs_ended[0]) >= 0.15
        in_order = max(longs_ended) - quick_ended < 2.0
        if apart and (in_order or not longs_first):
            return quick, pending
    pytest.fail("the calls never reached Triton in the order they were sent in three tries")


def _one_try(
    server: TritonServer, waited: list[float]
) -> tuple[str, list[Future[str]], list[float], float]:
    clients = [_client(server) for _ in range(3)]
    try:
        for client in clients:  # connections open before the timed part starts
            assert _answer(client, scripted_request("warm")) == "Answer: WARM"
        ended: list[float] = []

        def long_call(client: TritonBackend) -> str:
            text = _answer(client, LONG)
            ended.append(time.monotonic())
            return text

        with ThreadPoolExecutor(2) as pool:
            longs: list[Future[str]] = []
            for client in clients[:2]:
                longs.append(pool.submit(long_call, client))
                time.sleep(0.3)  # the first is executing before the second arrives
            quick_sent = time.monotonic()
            quick = clients[2].generate(scripted_request("quick")).text
            quick_ended = time.monotonic()
            waited.append(quick_ended - quick_sent)
            pending = [f for f in longs if not f.done()]
            assert [f.result(timeout=30) for f in longs] == ["Answer: SLOW"] * 2
        return quick, pending, ended, quick_ended
    finally:
        for client in clients:
            client.close()


def test_inflight_answers_a_call_without_waiting_for_others(inflight_server) -> None:
    quick, pending = _short_call_beside_two_long_ones(inflight_server)
    assert quick == "Answer: QUICK"
    assert len(pending) == 2  # both long calls were still running when it came back


def test_batch_scheduling_makes_a_call_wait_for_a_free_instance(triton_server) -> None:
    waited: list[float] = []
    quick, _ = _short_call_beside_two_long_ones(triton_server, longs_first=True, waited=waited)
    assert quick == "Answer: QUICK"
    # It queued until the first long call's instance was free (about 2.4 s of that call's
    # 3 s were left when it was sent); answered at once it takes milliseconds. Not whether
    # the long calls' futures were done when it returned: the first one's answer comes back
    # in the same instant, and its thread may not have run yet.
    assert waited[-1] >= 1.0


def test_inflight_streams_interleave_each_complete_and_in_order(inflight_server) -> None:
    def stream(text: str) -> list[str]:
        client = _client(inflight_server)
        try:
            return [d.text for d in client.stream(scripted_request(text)) if d.text]
        finally:
            client.close()

    with ThreadPoolExecutor(3) as pool:
        slow = pool.submit(stream, "[words:8] [pace:100]")
        time.sleep(0.1)
        fast = pool.submit(stream, "[words:30]")
        fast_pieces = fast.result(timeout=30)
        slow_running = not slow.done()  # decode steps of one call do not hold up another
        slow_pieces = slow.result(timeout=30)
    assert "".join(fast_pieces) == " ".join(f"w{i}" for i in range(1, 31))
    assert "".join(slow_pieces) == " ".join(f"w{i}" for i in range(1, 9))
    assert len(slow_pieces) == 8 and len(fast_pieces) == 30
    assert slow_running


def test_inflight_reports_model_errors(inflight_server) -> None:
    client = _client(inflight_server)
    try:
        with pytest.raises(InferenceError, match="boom"):
            client.generate(scripted_request("[error:boom]"))
        with pytest.raises(InferenceError, match="boom"):
            list(client.stream(scripted_request("[error:boom]")))
        assert client.generate(scripted_request("after")).text == "Answer: AFTER"
    finally:
        client.close()


def test_inflight_server_stops_with_calls_in_flight(tmp_path: Path) -> None:
    settings = Settings().triton
    repo = bench_repository(settings.model_repository, tmp_path / "models", 0, 64, "inflight")
    server = TritonServer(install_triton(settings.home), repo, log_path=tmp_path / "t.log")
    server.start()
    client = _client(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(client.generate, scripted_request("[delay:600000]"))
            time.sleep(0.5)
            server.stop()
            try:  # answered at unload or cut off: either way the caller is not left hanging
                outcome = call.result(timeout=60).text
            except InferenceError as exc:
                outcome = type(exc).__name__
        print(f"\na call in flight when the server stopped: {outcome!r}")
        assert server.proc is not None and server.proc.poll() is not None
    finally:
        client.close()
