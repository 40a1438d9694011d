"""The worker's replica pools, built from settings: one per backend kind."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from app.config import InferenceSettings, ReplicaSettings, Settings, Strategy
from app.inference.backend import InferenceBackend
from app.inference.breaker import CircuitBreaker
from app.inference.echo import EchoBackend
from app.inference.pool import Replica, ReplicaPool
from app.inference.prefix import PrefixIndex
from app.inference.tokens import counters


def replicas_from_settings(
    replicas: Sequence[ReplicaSettings],
    make_backend: Callable[[ReplicaSettings], InferenceBackend],
    settings: InferenceSettings,
) -> list[Replica]:
    """One :class:`Replica` per entry, each with its own client and breaker."""
    return [
        Replica(
            name=r.url,
            backend=make_backend(r),
            breaker=CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s),
            weight=r.weight,
            health_url=r.health_url,
            metrics_url=r.metrics_url,
        )
        for r in replicas
    ]


def default_model(settings: Settings, kind: str) -> str | None:
    """The model a backend kind serves when an agent names none (echo: no model)."""
    return {"triton": settings.triton.model, "openai": settings.openai.model}.get(kind)


def agent_models(
    settings: Settings, agents: Iterable[tuple[str, str | None]]
) -> dict[str, frozenset[str]]:
    """Backend kind -> the models its agents use, from (backend, model) pairs; an agent's
    model None is its backend's default. Echo needs none."""
    found: dict[str, set[str]] = {}
    for kind, model in agents:
        name = model or default_model(settings, kind)
        if name is not None:
            found.setdefault(kind, set()).add(name)
    return {kind: frozenset(models) for kind, models in found.items()}


def prefix_index(settings: Settings, kind: str, client: Any | None) -> PrefixIndex | None:
    """The prefix index of backend ``kind``'s pool, shared by the worker processes through
    ``client`` (:func:`index_client`); None without one (the pool keeps its own)."""
    if client is None:
        return None
    inference = settings.inference
    return PrefixIndex(
        client, kind, ttl_s=inference.prefix_ttl_s, max_blocks=inference.prefix_max_blocks
    )


def index_client(settings: Settings) -> Any:
    """Redis for the prefix index: a lookup waits at most half a second and is not retried
    (the pool routes on its own index meanwhile)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from app.ops.redis_clients import redis_client

    timeout = min(0.5, settings.redis_socket_timeout_s)
    return redis_client(
        settings,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def build_pools(
    settings: Settings,
    models: Mapping[str, Collection[str]] | None = None,
    kinds: Collection[str] | None = None,
) -> dict[str, ReplicaPool]:
    """A started pool per backend kind: ``triton`` and ``echo`` always, ``openai`` when
    configured; only those of ``kinds`` when given (a worker's agents' backends: it imports
    and connects no other client). ``models``: backend kind -> the models its agents use (see
    :func:`agent_models`), what each pool's readiness asks its replicas for."""
    models = models or {}
    wanted = set(kinds) if kinds is not None else {"triton", "openai", "echo"}
    inference = settings.inference
    # Only agents routed by prefix use the index: no Redis client for it otherwise.
    uses_prefix = Strategy.PREFIX in {inference.strategy, *inference.agent_strategies.values()}
    client = index_client(settings) if uses_prefix and wanted - {"echo"} else None
    counter = counters(settings)
    pools: dict[str, ReplicaPool] = {}
    triton = settings.triton
    if "triton" in wanted:
        from app.inference.triton import TritonBackend

        pools["triton"] = ReplicaPool(
            replicas_from_settings(
                triton.replica_list(),
                lambda r: TritonBackend(
                    r.url,
                    triton.model,
                    triton.stream_model,
                    triton.timeout_s,
                    triton.stream_models,
                    counter=counter["triton"],
                    chat_templates=triton.chat_templates,
                    guided_decoding=triton.guided_decoding,
                ),
                settings.inference,
            ),
            settings.inference,
            kind="triton",
            models=models.get("triton", ()),
            prefix=prefix_index(settings, "triton", client),
        )
    openai = settings.openai
    if "openai" in wanted and openai.replicas:
        from app.inference.openai_compat import OpenAICompatBackend

        key = openai.api_key.get_secret_value() if openai.api_key else None
        pools["openai"] = ReplicaPool(
            replicas_from_settings(
                openai.replicas,
                lambda r: OpenAICompatBackend(
                    r.url, openai.model, key, openai.timeout_s, counter=counter["openai"]
                ),
                settings.inference,
            ),
            settings.inference,
            kind="openai",
            models=models.get("openai", ()),
            prefix=prefix_index(settings, "openai", client),
        )
    started = {kind: pool.start() for kind, pool in pools.items()}
    if "echo" in wanted:
        breaker = CircuitBreaker(inference.breaker_failures, inference.breaker_cooldown_s)
        # No server behind it, nothing to scrape or probe: not started.
        started["echo"] = ReplicaPool(
            [Replica("echo", EchoBackend(), breaker)], inference, kind="echo"
        )
    return started
