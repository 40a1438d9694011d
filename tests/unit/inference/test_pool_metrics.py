"""The pool reports each try of a model call on a replica: latency, and errors by kind."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from app.errors import InferenceError
from tests.fixtures.backends import Server, ask, make_pool


def calls(replica: str) -> float:
    labels = {"backend": "triton", "replica": replica}
    return REGISTRY.get_sample_value("agentq_model_call_duration_seconds_count", labels) or 0.0


def errors(replica: str, error: str) -> float:
    labels = {"backend": "triton", "replica": replica, "error": error}
    return REGISTRY.get_sample_value("agentq_model_call_errors_total", labels) or 0.0


def test_each_try_is_timed_and_a_failed_one_counted_on_its_replica() -> None:
    pool, _ = make_pool(Server("m-up:1"), Server("m-down:1", up=False))  # round robin: down first
    assert pool.generate(ask()).text == "from m-up:1"
    assert (calls("m-down:1"), errors("m-down:1", "unavailable")) == (1, 1)
    assert (calls("m-up:1"), errors("m-up:1", "unavailable")) == (1, 0)
    with pytest.raises(InferenceError):
        pool.generate(ask("[error]"))
    assert errors("m-up:1", "model_error") == 1


def test_a_stream_is_one_try_ending_with_its_last_piece() -> None:
    server = Server("m-stream:1")
    pool, _ = make_pool(server)
    assert "".join(d.text for d in pool.stream(ask())) == "m-stream:10 m-stream:11 m-stream:12 "
    assert (calls("m-stream:1"), errors("m-stream:1", "unavailable")) == (1, 0)
    server.fail_after = 1
    with pytest.raises(InferenceError):
        list(pool.stream(ask()))
    assert (calls("m-stream:1"), errors("m-stream:1", "unavailable")) == (2, 1)
    server.fail_after = None
    pieces = pool.stream(ask())
    next(pieces)
    pieces.close()  # the reader stopped early: timed, not the replica's failure
    assert (calls("m-stream:1"), errors("m-stream:1", "unavailable")) == (3, 1)


def test_readiness_probes_each_replica_with_a_closed_breaker() -> None:
    ready, down = Server("m-r:1"), Server("m-r:2")
    down.ready = False
    pool, _ = make_pool(ready, down)
    assert pool.readiness() == {"m-r:1": True, "m-r:2": False}
