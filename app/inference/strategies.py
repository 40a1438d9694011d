"""Replica choice: pure functions of the replicas' state, given as arguments. No I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.config import Strategy


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """What a strategy may know of a replica at the moment of choice."""

    name: str
    weight: float = 1.0
    in_flight: int = 0  # calls this pool has open on it now
    served: int = 0  # calls this pool has sent it so far
    queue_depth: float | None = None  # requests waiting at the server (scraped), if known


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
      calls without a session go to the least in-flight.
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
    if strategy is Strategy.SESSION_AFFINITY and session_id:
        return max(indices, key=lambda i: _rendezvous(session_id, replicas[i].name))
    return _least(indices, lambda i: replicas[i].in_flight)
