"""Replica choice strategies (pure), the Prometheus queue-depth parser and the backoff."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.config import Strategy
from app.inference.pool import backoff_delay
from app.inference.queue_depth import parse_queue_depth
from app.inference.strategies import ReplicaView, choose_replica

A, B, C = (ReplicaView("a:8001"), ReplicaView("b:8001"), ReplicaView("c:8001"))


def test_no_candidates_means_no_choice() -> None:
    for strategy in Strategy:
        assert choose_replica(strategy, []) is None


def test_shortest_queue_picks_the_fewest_waiting_requests() -> None:
    replicas = [
        ReplicaView("a", queue_depth=7),
        ReplicaView("b", queue_depth=2),
        ReplicaView("c", queue_depth=4),
    ]
    assert choose_replica(Strategy.SHORTEST_QUEUE, replicas) == 1


def test_shortest_queue_adds_own_open_calls_and_treats_unknown_depth_as_zero() -> None:
    # b's server queue is shorter, but this pool already has 5 calls open on it.
    replicas = [ReplicaView("a", queue_depth=3), ReplicaView("b", queue_depth=1, in_flight=5)]
    assert choose_replica(Strategy.SHORTEST_QUEUE, replicas) == 0
    unknown = [ReplicaView("a", queue_depth=2), ReplicaView("b", queue_depth=None, in_flight=1)]
    assert choose_replica(Strategy.SHORTEST_QUEUE, unknown) == 1


def test_round_robin_cycles_through_candidates() -> None:
    picks = [choose_replica(Strategy.ROUND_ROBIN, [A, B, C], ticket=t) for t in range(9)]
    assert picks == [0, 1, 2] * 3


def test_least_in_flight_picks_the_least_busy_and_breaks_ties_by_order() -> None:
    replicas = [ReplicaView("a", in_flight=3), ReplicaView("b", in_flight=1), ReplicaView("c")]
    assert choose_replica(Strategy.LEAST_IN_FLIGHT, replicas) == 2
    assert choose_replica(Strategy.LEAST_IN_FLIGHT, [A, B]) == 0


def test_weighted_spreads_calls_in_proportion_to_weights_and_interleaves() -> None:
    served = [0, 0, 0]
    weights = [3.0, 1.0, 2.0]
    picks = []
    for _ in range(60):
        views = [ReplicaView(n, weights[i], served=served[i]) for i, n in enumerate("abc")]
        i = choose_replica(Strategy.WEIGHTED, views)
        assert i is not None
        served[i] += 1
        picks.append(i)
    assert served == [30, 10, 20]
    # Smooth: the heaviest never runs more than its share ahead in a window of 6 calls.
    for start in range(0, 60, 6):
        assert Counter(picks[start : start + 6]) == Counter({0: 3, 1: 1, 2: 2})


def test_random_maps_the_uniform_number_onto_candidates() -> None:
    assert [choose_replica(Strategy.RANDOM, [A, B, C], rand=r) for r in (0.0, 0.34, 0.99)] == [
        0,
        1,
        2,
    ]
    rng = random.Random(7)
    counts = Counter(
        choose_replica(Strategy.RANDOM, [A, B], rand=rng.random()) for _ in range(2000)
    )
    assert 850 < counts[0] < 1150 and counts[0] + counts[1] == 2000


def test_session_affinity_keeps_a_session_on_its_replica() -> None:
    sessions = [f"user-{i}" for i in range(200)]
    first = {
        s: choose_replica(Strategy.SESSION_AFFINITY, [A, B, C], session_id=s) for s in sessions
    }
    # Stable whatever else changes (load, order of calls).
    busy = [ReplicaView("a:8001", in_flight=50), B, ReplicaView("c:8001", queue_depth=99)]
    for s in sessions:
        assert choose_replica(Strategy.SESSION_AFFINITY, busy, session_id=s) == first[s]
    # Spread over all replicas.
    assert set(Counter(first.values())) == {0, 1, 2}


def test_session_affinity_moves_only_the_sessions_of_a_replica_that_leaves() -> None:
    sessions = [f"s{i}" for i in range(300)]
    names = ["a:8001", "b:8001", "c:8001"]
    before = {
        s: names[choose_replica(Strategy.SESSION_AFFINITY, [A, B, C], session_id=s)]
        for s in sessions
    }
    after = {
        s: ["a:8001", "c:8001"][choose_replica(Strategy.SESSION_AFFINITY, [A, C], session_id=s)]
        for s in sessions
    }
    moved = {s for s in sessions if before[s] != after[s]}
    assert moved == {s for s in sessions if before[s] == "b:8001"}


def test_session_affinity_without_a_session_uses_least_in_flight() -> None:
    replicas = [ReplicaView("a", in_flight=4), ReplicaView("b", in_flight=0)]
    assert choose_replica(Strategy.SESSION_AFFINITY, replicas, session_id=None) == 1


def test_strategy_names_are_accepted_as_strings() -> None:
    assert choose_replica("round_robin", [A, B], ticket=1) == 1
    with pytest.raises(ValueError):
        choose_replica("fastest", [A, B])


TRITON_METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 6
nv_inference_pending_request_count{model="ensemble_stream",version="1"} 3
# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 1234
"""

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama"} 4.0
"""


def test_queue_depth_sums_triton_pending_requests_over_models() -> None:
    assert parse_queue_depth(TRITON_METRICS) == 9


# Triton in front of TensorRT-LLM: the decoupled backend takes requests at once, so Triton's
# queue is empty and the batcher's gauge holds the waiting ones (active/max are not waiting).
TRTLLM_METRICS = """\
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="ensemble",version="1"} 0
nv_inference_pending_request_count{model="tensorrt_llm",version="1"} 1
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 12
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 3
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 76
"""


def test_queue_depth_adds_the_requests_tensorrt_llm_holds_waiting() -> None:
    assert parse_queue_depth(TRTLLM_METRICS) == 13


def test_queue_depth_reads_vllm_waiting_requests() -> None:
    assert parse_queue_depth(VLLM_METRICS) == 4


@pytest.mark.parametrize("text", ["", "# only comments\n", "nv_other_metric 3\n", "{{ not prom"])
def test_queue_depth_is_none_without_the_gauge(text: str) -> None:
    assert parse_queue_depth(text) is None


def test_backoff_doubles_is_capped_and_jittered() -> None:
    assert [backoff_delay(a, 0.05, 1.0, 1.0) for a in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff_delay(3, 0.05, 1.0, 0.5) == pytest.approx(0.2)
    assert backoff_delay(10, 0.05, 1.0, 0.0) == 0.0
