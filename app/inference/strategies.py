"""Replica choice: pure functions of the replicas' state, given as arguments. No I/O.

The ``prefix`` strategy adds up weighted scores, each 0..1 per candidate, as llm-d's
Endpoint Picker does: how much of the request's conversation the replica was last sent
(its KV cache likely holds it), and its load (queue, KV-cache use, running requests), each
relative to the candidates' least, and what the replica already holds (the blocks the router
sent it within the index's TTL). Loads are compared as ratios rather than min-max
normalised, so between two replicas one call more does not outweigh a long match. A
replica loaded well beyond the least loaded (twice, by default) loses its prefix score, so a
prefix every session shares, or one hot session, cannot pile every call onto one replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.config import Strategy
from app.config.inference import DEFAULT_MAX_IMBALANCE, DEFAULT_SCORERS


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a strategy may know of a replica at the moment of choice."""

    name: str
    weight: float = 1.0
    in_flight: int = 0  # calls this pool has open on it now
    served: int = 0  # calls this pool has sent it so far
    queue_depth: float | None = None  # requests waiting at the server (scraped), if known
    running: float | None = None  # requests running at the server (scraped), if known
    kv_cache_usage: float | None = None  # share of its KV cache in use, 0..1 (scraped)
    prefix_match: float = 0.0  # share of the request's blocks last sent here, 0..1
    held: float | None = None  # blocks of the pool's conversations sent here within the TTL

    @property
    def load(self) -> float:
        """Requests waiting at the server plus calls open from this pool."""
        return (self.queue_depth or 0) + self.in_flight


def _least(candidates: Sequence[int], key: Callable[[int], Any]) -> int:
    return min(candidates, key=lambda i: (key(i), i))


def _rendezvous(session_id: str, name: str) -> int:
    digest = hashlib.blake2b(f"{session_id}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choose_replica(
    strategy: Strategy | str,
    replicas: Sequence[ReplicaView],
    *,
    ticket: int = 0,
    rand: float = 0.0,
    session_id: str | None = None,
    scorers: Mapping[str, float] = DEFAULT_SCORERS,
    max_imbalance: float = DEFAULT_MAX_IMBALANCE,
) -> int | None:
    """Index of the replica to call, or None when ``replicas`` is empty.

    ``replicas`` holds only the candidates (healthy ones); ``ticket`` is a counter the caller
    increments per call (round robin); ``rand`` a uniform number in [0, 1) (random).

    - shortest_queue: fewest requests queued at the server plus open here; a replica whose
      depth is unknown counts only its open calls;
    - round_robin: ``ticket`` modulo the number of candidates;
    - least_in_flight: fewest calls open from this pool;
    - weighted: the replica furthest behind its share (served / weight), so calls interleave
      in proportion to the weights (smooth, deterministic);
    - random: uniform by ``rand``;
    - session_affinity: rendezvous hashing of ``session_id`` over the candidates, so a session
      keeps its replica while it stays healthy and only its sessions move when it leaves;
      calls without a session go to the least in-flight;
    - prefix: the highest sum of ``scorers``' weighted scores (:func:`scores`); ties go
      round robin by ``ticket``, so fresh sessions spread.
    """
    if not replicas:
        return None
    indices = range(len(replicas))
    strategy = Strategy(strategy)
    if strategy is Strategy.SHORTEST_QUEUE:
        return _least(indices, lambda i: (replicas[i].queue_depth or 0) + replicas[i].in_flight)
    if strategy is Strategy.ROUND_ROBIN:
        return ticket % len(replicas)
    if strategy is Strategy.WEIGHTED:
        return _least(indices, lambda i: (replicas[i].served + 1) / replicas[i].weight)
    if strategy is Strategy.RANDOM:
        return min(int(rand * len(replicas)), len(replicas) - 1)
    if strategy is Strategy.PREFIX:
        total = scores(replicas, scorers, max_imbalance)
        best = max(total)
        tied = [i for i in indices if total[i] >= best - 1e-9]
        return tied[ticket % len(tied)]
    if strategy is Strategy.SESSION_AFFINITY and session_id:
        return max(indices, key=lambda i: _rendezvous(session_id, replicas[i].name))
    return _least(indices, lambda i: replicas[i].in_flight)


def scores(
    replicas: Sequence[ReplicaView],
    scorers: Mapping[str, float] = DEFAULT_SCORERS,
    max_imbalance: float = DEFAULT_MAX_IMBALANCE,
) -> list[float]:
    """Each candidate's weighted sum of the scores named in ``scorers`` (each 0..1):

    - prefix: ``prefix_match``, or 0 when the replica is overloaded: ``1 + load`` above
      ``1 + max_imbalance`` times the least loaded candidate's (1: twice, counting the call
      to place), so a shared prefix or a hot session cannot pile calls onto one replica;
    - queue: ``(1 + least) / (1 + load)``, load being requests waiting there plus open here:
      1 for the least loaded, one call more weighs less the busier all are;
    - kv_cache: ``1 - kv_cache_usage``;
    - running: as queue, of the requests running at the server;
    - held: as queue, of the blocks the router sent the replica within the index's TTL (what
      its cache holds, as Dynamo's router counts a worker's active blocks): sessions that wait
      in tools hold their replica's cache without a call open, and a shared system prompt
      would otherwise draw every new session to the replica that first got it.

    A figure a replica does not export counts as the mean of those that do; one no candidate
    exports scores 1 for all.
    """
    least = min(r.load for r in replicas)
    parts = {
        "prefix": [
            r.prefix_match if 1 + r.load <= (1 + max_imbalance) * (1 + least) else 0.0
            for r in replicas
        ],
        "queue": _relative([r.load for r in replicas]),
        "kv_cache": [1.0 - u for u in _filled([r.kv_cache_usage for r in replicas], 0.0)],
        "running": _relative([r.running for r in replicas]),
        "held": _relative([r.held for r in replicas]),
    }
    return [
        sum(weight * parts[name][i] for name, weight in scorers.items() if name in parts)
        for i in range(len(replicas))
    ]


def _filled(values: Sequence[float | None], default: float) -> list[float]:
    """``values`` with the unknown ones as the mean of the known (``default`` if none is)."""
    known = [v for v in values if v is not None]
    mean = sum(known) / len(known) if known else default
    return [mean if v is None else v for v in values]


def _relative(values: Sequence[float | None]) -> list[float]:
    """``(1 + least) / (1 + value)``: 1 for the smallest count, less for larger ones."""
    filled = [max(v, 0.0) for v in _filled(values, 0.0)]
    least = min(filled)
    return [(1 + least) / (1 + v) for v in filled]
