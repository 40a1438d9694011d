"""Whether each Redis agentq uses keeps what it is given: read by a worker at start.

A ``maxmemory-policy`` other than ``noeviction`` lets Redis delete keys under memory pressure:
queue lists, unacknowledged messages, run leases, published and side-effect markers,
idempotency keys. A worker refuses such a broker or state Redis; a Redis that is only the
result backend loses answers the session store also keeps, so there it is a warning. A Redis
that writes nothing to disk (no AOF, no RDB save rule) loses all of it on a restart: a
warning and the ``agentq_redis_persistence`` gauge.

The policy and AOF come from ``INFO``, which managed services (ElastiCache, Memorystore)
allow; the RDB save rules only from ``CONFIG GET save``, which they often refuse.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from app.config import Settings, mask_url
from app.errors import ConfigurationError
from app.ops import metrics

log = logging.getLogger(__name__)

# What each Redis of the settings holds, in the order they are named.
ROLES = ("broker", "state", "results")
KEEPS_NO_QUEUES = frozenset({"results"})  # may evict: the answers are in the session store too


@dataclass(frozen=True, slots=True)
class Durability:
    """What a Redis said about keeping its data; None where it would not say."""

    policy: str | None  # maxmemory-policy
    aof: bool | None  # appendonly
    save: str | None  # the RDB save rules ("" when none)

    @property
    def persistent(self) -> bool | None:
        """Whether it writes its data to disk (AOF or an RDB save rule); None: unknown."""
        if self.aof or self.save:
            return True
        if self.aof is None or self.save is None:
            return None
        return False


def roles(settings: Settings) -> dict[str, list[str]]:
    """Each Redis URL of ``settings`` and the roles it serves: ``broker`` (the queues),
    ``state`` (AGENTQ_REDIS_URL: leases, markers, idempotency keys, dead letters, token
    streams), ``results`` (Celery's result backend)."""
    urls = (settings.broker, settings.redis_url, settings.backend)
    found: dict[str, list[str]] = {}
    for role, url in zip(ROLES, urls, strict=True):
        found.setdefault(url, []).append(role)
    return found


def parse(
    memory: Mapping[str, Any] | None, persistence: Mapping[str, Any] | None, save: str | None
) -> Durability:
    """A :class:`Durability` from ``INFO memory``, ``INFO persistence`` and the ``save``
    setting (None for each that was refused)."""
    policy = (memory or {}).get("maxmemory_policy")
    aof = (persistence or {}).get("aof_enabled")
    return Durability(
        policy=str(policy) if policy is not None else None,
        aof=bool(int(aof)) if aof is not None else None,
        save=save.strip() if save is not None else None,
    )


def read(client: Any) -> Durability:
    """Ask ``client``'s Redis; a command it refuses (ACL, a managed service) is unknown."""

    def ask(command: Any, *args: str) -> Any:
        try:
            return command(*args)
        except redis.ResponseError:  # NOPERM, unknown command: not ours to fix here
            return None

    config = ask(client.config_get, "save")
    return parse(
        ask(client.info, "memory"),
        ask(client.info, "persistence"),
        config.get("save") if config else None,
    )


def assess(
    where: str, served: Sequence[str], durability: Durability
) -> tuple[str | None, list[str]]:
    """The refusal (None when the Redis may be used) and the warnings for the Redis at
    ``where`` serving the roles ``served``, from what it said."""
    name = f"Redis at {where} ({', '.join(served)})"
    queues = not set(served) <= KEEPS_NO_QUEUES
    holds = "queued steps, leases and markers" if queues else "run results not yet read"
    refusal, warnings = None, []
    policy = durability.policy
    if policy is None:
        warnings.append(
            f"{name}: its maxmemory-policy is unknown (INFO memory refused or silent); make "
            f"sure it is noeviction, or it may evict {holds} under memory pressure"
        )
    elif policy != "noeviction" and queues:
        refusal = (
            f"{name} has maxmemory-policy {policy}: under memory pressure it would evict {holds} "
            "and runs would be lost; set it to noeviction (`CONFIG SET maxmemory-policy "
            "noeviction` and in redis.conf, or in the managed service's parameter group)"
        )
    elif policy != "noeviction":
        warnings.append(
            f"{name} has maxmemory-policy {policy}: it may evict {holds} (the session store "
            "keeps the answers); set noeviction to keep them"
        )
    persistent = durability.persistent
    if persistent is False:
        warnings.append(
            f"{name} keeps no data on disk (appendonly no, no save rule): a restart loses "
            f"{holds}; set appendonly yes, or give it a replica"
        )
    elif persistent is None:
        why = "INFO refused" if durability.aof is None else "AOF off, CONFIG GET save refused"
        warnings.append(
            f"{name}: whether a restart keeps {holds} is unknown ({why}); check its "
            "persistence or replicas"
        )
    return refusal, warnings


def check(client: Any, url: str, served: Sequence[str]) -> list[str]:
    """Read the Redis at ``url`` through ``client`` and set the persistence gauge of each role
    in ``served``; ConfigurationError when it may evict what it serves, else its warnings."""
    durability = read(client)
    for role in served:
        metrics.redis_persistence(role, durability.persistent)
    refusal, warnings = assess(mask_url(url), served, durability)
    if refusal is not None:
        raise ConfigurationError(refusal)
    return warnings


def warn(warnings: Sequence[str]) -> None:
    """Log ``warnings`` (once the worker's logging is set up, so they carry its format)."""
    for warning in warnings:
        log.warning("%s", warning)
