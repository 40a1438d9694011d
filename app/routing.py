"""Pure routing: which queue a run's messages go to. No I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.config import Strategy
from app.constants import QUEUE_METRICS, TASK_RUN_AGENT, QueueGauge
from app.errors import InvalidInputError, UnknownAgentError


def queue_for_agent(queues: Mapping[str, str], agent: object) -> str:
    """The queue of ``agent`` in ``queues`` (agent type -> queue), or a typed error."""
    if not isinstance(agent, str) or not agent:
        raise InvalidInputError(f"'agent' must be a non-empty string, got {agent!r}")
    try:
        return queues[agent]
    except KeyError:
        known = ", ".join(sorted(queues)) or "none"
        raise UnknownAgentError(f"unknown agent {agent!r}; known agent types: {known}") from None


class AgentRouter:
    """Celery router: sends ``agentq.run_agent`` to the queue of its ``agent`` argument.

    Routes are data (the registry's agent -> queue table), so ``run_agent.delay(agent=...)``
    needs no ``queue=`` and an unknown agent fails at the producer.
    """

    def __init__(self, queues: Mapping[str, str]) -> None:
        self.queues = dict(queues)

    def __call__(
        self,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        task: Any = None,
        **_: Any,
    ) -> dict[str, str] | None:
        if name != TASK_RUN_AGENT:
            return None
        agent = kwargs.get("agent") if kwargs else None
        if agent is None and args:
            agent = args[0]
        return {"queue": queue_for_agent(self.queues, agent)}


# ---- Replica choice: pure functions of the replicas' state, given as arguments ----


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


def parse_queue_depth(
    text: str, servers: Sequence[Sequence[QueueGauge]] = QUEUE_METRICS
) -> float | None:
    """Requests waiting at a model server, from its Prometheus exposition ``text``.

    Sums every matching sample of the gauges of the first kind of ``servers`` present (a
    Triton replica: ``nv_inference_pending_request_count`` of every model plus TensorRT-LLM's
    ``nv_trt_llm_request_metrics{request_type="waiting"}``; vLLM:
    ``vllm:num_requests_waiting``). None when none is present or the text does not parse.
    """
    totals: dict[int, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for kind, gauges in enumerate(servers):
                    if any(_counts(sample.name, sample.labels, g) for g in gauges):
                        totals[kind] = totals.get(kind, 0.0) + sample.value
    except ValueError:
        return None
    return totals[min(totals)] if totals else None


def _counts(name: str, labels: Mapping[str, str], gauge: QueueGauge) -> bool:
    wanted, required = gauge
    return name == wanted and all(labels.get(k) == v for k, v in required)
