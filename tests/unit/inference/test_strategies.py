"""Replica choice strategies (pure) and the backoff."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import Strategy
from app.inference.pool import backoff_delay
from app.inference.strategies import ReplicaView, choose_replica, scores

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


def test_backoff_doubles_is_capped_and_jittered() -> None:
    assert [backoff_delay(a, 0.05, 1.0, 1.0) for a in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert backoff_delay(3, 0.05, 1.0, 0.5) == pytest.approx(0.2)
    assert backoff_delay(10, 0.05, 1.0, 0.0) == 0.0


# ---- prefix: weighted scorers ----

SCORERS = {"prefix": 2.0, "queue": 1.0, "kv_cache": 1.0, "running": 1.0}


def test_prefix_prefers_the_replica_holding_the_longest_match() -> None:
    replicas = [ReplicaView("a", prefix_match=0.2), ReplicaView("b", prefix_match=0.9)]
    assert choose_replica(Strategy.PREFIX, replicas, scorers=SCORERS) == 1


def test_prefix_match_outweighs_a_slightly_longer_queue() -> None:
    # b holds 90% of the conversation and has one call more open: prefix 1.8 beats queue 1.
    replicas = [ReplicaView("a", prefix_match=0.1), ReplicaView("b", prefix_match=0.9, in_flight=1)]
    assert choose_replica(Strategy.PREFIX, replicas, scorers=SCORERS) == 1


def test_a_replica_loaded_past_the_imbalance_loses_its_prefix_bonus() -> None:
    # Counting the call to place, a has 1 + 4 = 5 against b's 2: past twice (imbalance 1).
    hot = [ReplicaView("a", prefix_match=1.0, in_flight=4), ReplicaView("b", in_flight=1)]
    assert choose_replica(Strategy.PREFIX, hot, scorers=SCORERS, max_imbalance=1) == 1
    assert choose_replica(Strategy.PREFIX, hot, scorers=SCORERS, max_imbalance=2) == 0
    # Against an idle replica, one call open keeps the bonus, two lose it.
    one = [ReplicaView("a", prefix_match=0.5, in_flight=1), ReplicaView("b")]
    assert choose_replica(Strategy.PREFIX, one, scorers=SCORERS) == 0
    two = [ReplicaView("a", prefix_match=0.5, in_flight=2), ReplicaView("b")]
    assert choose_replica(Strategy.PREFIX, two, scorers=SCORERS) == 1
    # The server's own queue counts as load too.
    queued = [ReplicaView("a", prefix_match=1.0, queue_depth=9), ReplicaView("b", queue_depth=3)]
    assert choose_replica(Strategy.PREFIX, queued, scorers=SCORERS) == 1


def test_prefix_without_a_match_places_by_load_and_kv_cache() -> None:
    replicas = [
        ReplicaView("a", kv_cache_usage=0.9, running=8),
        ReplicaView("b", kv_cache_usage=0.2, running=2),
    ]
    assert choose_replica(Strategy.PREFIX, replicas, scorers=SCORERS) == 1
    # A replica that exports no KV figure counts as the mean of those that do.
    partly = [
        ReplicaView("a", kv_cache_usage=0.9),
        ReplicaView("b"),
        ReplicaView("c", kv_cache_usage=0.1),
    ]
    assert choose_replica(Strategy.PREFIX, partly, scorers={"kv_cache": 1}) == 2


def test_prefix_ties_go_round_robin_so_fresh_sessions_spread() -> None:
    picks = {choose_replica(Strategy.PREFIX, [A, B, C], ticket=t) for t in range(3)}
    assert picks == {0, 1, 2}


def test_weights_decide_between_prefix_and_load() -> None:
    replicas = [ReplicaView("a", prefix_match=0.4, in_flight=1), ReplicaView("b")]
    assert choose_replica(Strategy.PREFIX, replicas, scorers={"prefix": 4, "queue": 1}) == 0
    assert choose_replica(Strategy.PREFIX, replicas, scorers={"prefix": 1, "queue": 1}) == 1
    assert choose_replica(Strategy.PREFIX, replicas, scorers={"queue": 1}) == 1


views = st.builds(
    ReplicaView,
    name=st.text(min_size=1, max_size=3),
    in_flight=st.integers(0, 20),
    queue_depth=st.none() | st.floats(0, 50),
    running=st.none() | st.floats(0, 50),
    kv_cache_usage=st.none() | st.floats(0, 1),
    prefix_match=st.floats(0, 1),
)
weights = st.dictionaries(st.sampled_from(list(SCORERS)), st.floats(0, 10))


@given(st.lists(views, min_size=1, max_size=6), weights, st.floats(0, 10))
def test_every_score_lies_within_the_weights(
    replicas: list[ReplicaView], scorers: dict[str, float], imbalance: float
) -> None:
    for score in scores(replicas, scorers, imbalance):
        assert -1e-9 <= score <= sum(scorers.values()) + 1e-9


@given(st.lists(views, min_size=2, max_size=6), st.integers(0, 100))
def test_prefix_never_picks_an_overloaded_replica_over_one_that_is_not(
    replicas: list[ReplicaView], ticket: int
) -> None:
    # With the queue as the only load scorer, an overloaded replica (prefix bonus gone, queue
    # score below the least loaded's) never wins while one within the bound exists.
    index = choose_replica(
        Strategy.PREFIX, replicas, ticket=ticket, scorers={"prefix": 1, "queue": 1}, max_imbalance=1
    )
    assert index is not None
    least = min(r.load for r in replicas)

    def overloaded(r: ReplicaView) -> bool:
        return 1 + r.load > 2 * (1 + least)

    assert not overloaded(replicas[index]) or all(overloaded(r) for r in replicas)


def test_a_shared_system_prompt_does_not_draw_every_new_session_to_one_replica() -> None:
    # A new session matches only the system prompt, sent so far to a, which already holds
    # other sessions' blocks; between turns no call is open anywhere.
    a = ReplicaView("a", prefix_match=0.5, held=40)
    b = ReplicaView("b", prefix_match=0.0, held=0)
    assert choose_replica(Strategy.PREFIX, [a, b]) == 1


def test_a_session_stays_on_its_replica_while_the_replicas_hold_alike() -> None:
    mine = ReplicaView("a", prefix_match=0.8, held=50)
    other = ReplicaView("b", prefix_match=0.1, held=40)
    assert choose_replica(Strategy.PREFIX, [mine, other]) == 0
    # Its replica holds twice the other's: it still keeps the session whose cache it has.
    busy = ReplicaView("a", prefix_match=0.8, held=80)
    assert choose_replica(Strategy.PREFIX, [busy, other]) == 0
