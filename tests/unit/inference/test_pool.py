"""The replica pool's failure handling: failover, breakers, probes, deadlines, in-flight counts.

The replicas here are in-process backends (the pool's logic under test is ours); the same
behaviour against real Triton servers is in tests/integration/test_replica_pool.py.
"""

from __future__ import annotations

import threading

import pytest

from app.config import Strategy
from app.errors import (
    InferenceError,
    InferenceUnavailableError,
    ModelCallCancelledError,
    ModelNotFoundError,
    NoReplicaAvailableError,
)
from app.inference.backend import Route
from tests.fixtures.backends import Server, ask, make_pool


def test_a_down_replica_is_skipped_and_the_call_succeeds_elsewhere() -> None:
    a, b = Server("a", up=False), Server("b")
    pool, clock = make_pool(a, b)
    results = [pool.generate(ask()).replica for _ in range(6)]
    assert results == ["b"] * 6
    # a failed twice, which opened its breaker; then no call went there any more.
    assert a.calls == 2
    status = {s.name: s for s in pool.status()}
    assert not status["a"].ready and status["a"].failures == 2
    assert status["b"].ready and status["b"].in_flight == 0
    assert all(0 <= s <= 1.0 for s in clock.slept)


def test_model_errors_are_not_retried_and_do_not_open_the_breaker() -> None:
    a, b = Server("a"), Server("b")
    pool, _ = make_pool(a, b)
    for _ in range(5):
        with pytest.raises(InferenceError) as info:
            pool.generate(ask("[error]"))
        assert not isinstance(info.value, InferenceUnavailableError)
    assert a.calls + b.calls == 5
    assert all(s.ready and s.in_flight == 0 for s in pool.status())


def test_all_replicas_down_raises_unavailable_without_spinning() -> None:
    a, b = Server("a", up=False), Server("b", up=False)
    pool, _ = make_pool(a, b, attempts=3)
    with pytest.raises(InferenceUnavailableError):
        pool.generate(ask())
    assert a.calls + b.calls == 3  # bounded by attempts
    with pytest.raises(InferenceUnavailableError):
        pool.generate(ask())
    # Both breakers are open now: the next call fails at once, calling nobody.
    calls = a.calls + b.calls
    with pytest.raises(NoReplicaAvailableError, match="circuit open"):
        pool.generate(ask())
    assert a.calls + b.calls == calls


def test_an_open_breaker_closes_only_after_a_successful_probe() -> None:
    a, b = Server("a", up=False), Server("b")
    pool, clock = make_pool(a, b, breaker_cooldown_s=5.0)
    for _ in range(4):
        pool.generate(ask())
    assert not pool.status()[0].ready
    a.up = True  # back, but the breaker holds until the cooldown ends and a probe passes
    clock.now += 4.0
    pool.probe_due()
    assert not pool.status()[0].ready
    clock.now += 1.5
    a.ready = False  # cooldown over, but the readiness probe fails: a new cooldown
    pool.probe_due()
    assert not pool.status()[0].ready
    clock.now += 4.5
    a.ready = True
    pool.probe_due()  # the new cooldown is not over yet
    assert not pool.status()[0].ready
    clock.now += 1.0
    pool.probe_due()
    assert pool.status()[0].ready
    assert {pool.generate(ask()).replica for _ in range(4)} == {"a", "b"}


def test_when_every_breaker_is_open_a_call_probes_before_giving_up() -> None:
    a = Server("a", up=False)
    pool, clock = make_pool(a, breaker_cooldown_s=1.0)
    for _ in range(2):
        with pytest.raises(InferenceUnavailableError):
            pool.generate(ask())
    a.up = a.ready = True
    clock.now += 1.0
    assert pool.generate(ask()).replica == "a"  # no poller thread needed


def test_the_deadline_bounds_all_tries() -> None:
    a = Server("a", up=False)
    pool, clock = make_pool(a, attempts=50, breaker_failures=100, backoff_s=1.0, backoff_max_s=1.0)
    with pytest.raises(InferenceUnavailableError):
        pool.generate(ask(), timeout_s=3.0)
    assert clock.now <= 3.0 + 1e-9


def test_session_affinity_follows_the_session_and_fails_over() -> None:
    a, b = Server("a"), Server("b")
    pool, _ = make_pool(a, b, strategy=Strategy.SESSION_AFFINITY)
    route = Route(session_id="user-1")
    home = pool.generate(ask(), route=route).replica
    assert {pool.generate(ask(), route=route).replica for _ in range(5)} == {home}
    (a if home == "a" else b).up = False
    other = "b" if home == "a" else "a"
    assert pool.generate(ask(), route=route).replica == other


def test_stream_fails_over_before_the_first_piece() -> None:
    a, b = Server("a", up=False), Server("b")
    pool, _ = make_pool(a, b)
    deltas = list(pool.stream(ask()))
    assert [d.text for d in deltas] == ["b0 ", "b1 ", "b2 "]
    # The first piece names the replica that streams (a step keeps it).
    assert [d.replica for d in deltas] == ["b", None, None]
    assert all(s.in_flight == 0 for s in pool.status())


def test_stream_is_not_retried_once_pieces_went_out() -> None:
    a = Server("a")
    a.fail_after = 1
    pool, _ = make_pool(a, Server("b"), strategy=Strategy.LEAST_IN_FLIGHT)
    got = []
    with pytest.raises(InferenceUnavailableError):
        for piece in pool.stream(ask()):
            got.append(piece.text)
    assert got == ["a0 "]
    status = pool.status()[0]
    assert status.in_flight == 0 and status.failures == 1


def test_stream_holds_its_replica_in_flight_until_read_to_the_end() -> None:
    a, b = Server("a"), Server("b")
    pool, _ = make_pool(a, b, strategy=Strategy.LEAST_IN_FLIGHT)
    first = pool.stream(ask())
    assert next(first).text == "a0 "
    assert [s.in_flight for s in pool.status()] == [1, 0]
    assert pool.generate(ask()).replica == "b"  # least in flight sees the open stream
    first.close()  # the caller stops early
    assert [s.in_flight for s in pool.status()] == [0, 0]


def test_the_request_reaches_the_replica_as_it_is() -> None:
    a = Server("a")
    pool, _ = make_pool(a)
    request = ask("what is 2+3", model="llama")
    pool.generate(request)
    list(pool.stream(request))
    assert a.requests == [request, request]


def test_a_model_the_replica_lacks_is_not_retried_and_does_not_open_the_breaker() -> None:
    a, b = Server("a", models={"ensemble"}), Server("b", models={"ensemble"})
    pool, _ = make_pool(a, b, breaker_failures=1)
    for _ in range(3):
        with pytest.raises(ModelNotFoundError, match="llama"):
            pool.generate(ask(model="llama"))
        with pytest.raises(ModelNotFoundError, match="llama"):
            list(pool.stream(ask(model="llama")))
    assert a.calls + b.calls == 6
    assert all(s.ready and s.failures == 0 and s.in_flight == 0 for s in pool.status())


def test_a_model_is_missing_only_when_no_ready_replica_has_it() -> None:
    a = Server("a", models={"ensemble", "llama"})
    b = Server("b", models={"ensemble", "qwen"})
    pool, _ = make_pool(a, b, models={"ensemble", "llama", "qwen"})
    assert pool.missing_models() == []
    assert pool.missing_models(["mistral", "llama"]) == ["mistral"]
    b.ready = False  # b answers, but is not ready: qwen is served nowhere now
    assert pool.missing_models() == ["qwen"]
    a.up = False
    for _ in range(4):  # b serves them; a fails twice and its breaker opens
        pool.generate(ask())
    assert not pool.status()[0].ready  # llama too is served nowhere now
    assert pool.missing_models() == ["ensemble", "llama", "qwen"]


def test_a_pool_without_models_misses_none_and_asks_no_replica() -> None:
    a = Server("a")
    a.ready = False
    pool, _ = make_pool(a)
    assert pool.missing_models() == []


def test_a_stream_closed_before_its_first_read_frees_its_replica() -> None:
    a = Server("a")
    pool, _ = make_pool(a)
    stream = pool.stream(ask())  # the first piece is in: the replica is held
    assert [s.in_flight for s in pool.status()] == [1]
    stream.close()
    assert [s.in_flight for s in pool.status()] == [0]
    assert pool.status()[0].ready  # a reader that left is not the replica's failure


def test_a_cancelled_call_is_not_retried_and_does_not_count_against_the_breaker() -> None:
    a, b = Server("a"), Server("b")
    pool, clock = make_pool(a, b, breaker_failures=2, strategy=Strategy.LEAST_IN_FLIGHT)
    a.up = False
    pool.generate(ask())  # a failed once (b answered): one more failure would open its breaker
    assert (a.calls, b.calls) == (1, 1)
    a.up, a.cancelled_after = True, 0
    cancel = threading.Event()
    with pytest.raises(ModelCallCancelledError):
        pool.generate(ask(), cancel=cancel)
    assert a.cancels == [cancel]  # the replica was given the event
    assert (a.calls, b.calls) == (2, 1)  # not tried again on b
    a_status = pool.status()[0]
    assert a_status.ready and a_status.in_flight == 0 and a_status.failures == 1
    assert pool.replicas[0].breaker.failures == 1  # neither a failure nor a success
    assert len(clock.slept) == 1  # the first call's backoff only: none before giving up


def test_a_stream_cancelled_midway_frees_its_replica_without_a_failure() -> None:
    a = Server("a", up=False)
    pool, _ = make_pool(a, Server("b"), strategy=Strategy.LEAST_IN_FLIGHT)
    pool.generate(ask())  # a failed once
    a.up, a.cancelled_after = True, 1
    got = []
    with pytest.raises(ModelCallCancelledError):
        for piece in pool.stream(ask(), cancel=threading.Event()):
            got.append(piece.text)
    assert got == ["a0 "]
    status = pool.status()[0]
    assert status.ready and status.in_flight == 0 and status.failures == 1
    assert pool.replicas[0].breaker.failures == 1  # neither a failure nor a success


def test_a_stream_cancelled_before_its_first_piece_is_not_retried() -> None:
    a, b = Server("a"), Server("b")
    a.cancelled_after = 0
    pool, _ = make_pool(a, b, strategy=Strategy.LEAST_IN_FLIGHT)
    with pytest.raises(ModelCallCancelledError):
        list(pool.stream(ask(), cancel=threading.Event()))
    assert (a.calls, b.calls) == (1, 0)
    assert all(s.ready and s.in_flight == 0 and s.failures == 0 for s in pool.status())


def test_a_call_whose_run_is_already_cancelled_reaches_no_replica() -> None:
    a, b = Server("a"), Server("b")
    pool, _ = make_pool(a, b)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ModelCallCancelledError):
        pool.generate(ask(), cancel=cancel)
    with pytest.raises(ModelCallCancelledError):
        pool.stream(ask(), cancel=cancel)
    assert a.calls + b.calls == 0
