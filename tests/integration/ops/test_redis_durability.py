"""A starting worker's check of real Redis servers: eviction refused, persistence off or
unknown reported as warnings and in ``agentq_redis_persistence``."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from app.config import Settings
from app.errors import ConfigurationError
from app.local.redis import RedisServer
from app.ops.redis_clients import check_redis

pytestmark = pytest.mark.integration

ROLES = ("broker", "state", "results")


def _gauge(role: str) -> float | None:
    return REGISTRY.get_sample_value("agentq_redis_persistence", {"role": role})


def _check(url: str, **urls: str) -> list[str]:
    return check_redis(Settings(_env_file=None, redis_url=url, **urls))


def test_persistence_off_is_a_warning_and_a_gauge() -> None:
    with RedisServer() as server:  # the machine's and the demo's kind: no AOF, no save rule
        admin = server.client()
        assert _check(server.url) == [
            f"Redis at {server.url} (broker, state, results) keeps no data on disk (appendonly "
            "no, no save rule): a restart loses queued steps, leases and markers; set "
            "appendonly yes, or give it a replica"
        ]
        assert [_gauge(role) for role in ROLES] == [0.0, 0.0, 0.0]

        admin.config_set("save", "60 1")  # an RDB snapshot rule is a copy on disk
        assert _check(server.url) == []
        assert [_gauge(role) for role in ROLES] == [1.0, 1.0, 1.0]

        # A managed service: CONFIG is not allowed, and AOF off says nothing of snapshots.
        admin.config_set("save", "")
        admin.acl_setuser(
            "app", enabled=True, nopass=True, keys=["*"], channels=["*"],
            commands=["+@all", "-config"],
        )  # fmt: skip
        managed = server.url.replace("redis://", "redis://app@")
        warnings = _check(managed)
        assert len(warnings) == 1
        assert "is unknown (AOF off, CONFIG GET save refused)" in warnings[0]
        assert [_gauge(role) for role in ROLES] == [-1.0, -1.0, -1.0]


def test_eviction_is_refused_where_queues_are_and_flagged_where_only_results_are() -> None:
    lru = ["--maxmemory-policy", "allkeys-lru"]
    with (
        RedisServer(appendonly=True) as keeps,
        RedisServer(appendonly=True, options=lru) as evicts,
    ):
        assert _check(keeps.url) == []  # AOF on: nothing to say
        with pytest.raises(ConfigurationError) as refused:
            check_redis(Settings(_env_file=None, redis_url=keeps.url, broker_url=evicts.url))
        assert str(refused.value).startswith(
            f"Redis at {evicts.url} (broker) has maxmemory-policy allkeys-lru: under memory "
            "pressure it would evict queued steps"
        )
        warnings = _check(keeps.url, result_backend=evicts.url)
        assert warnings == [
            f"Redis at {evicts.url} (results) has maxmemory-policy allkeys-lru: it may evict "
            "run results not yet read (the session store keeps the answers); set noeviction "
            "to keep them"
        ]


def test_a_user_who_may_only_ping_gets_warnings_not_a_refusal() -> None:
    with RedisServer() as server:
        server.client().acl_setuser("pinger", enabled=True, nopass=True, commands=["+ping"])
        warnings = _check(server.url.replace("redis://", "redis://pinger@"))
    assert len(warnings) == 2
    assert "its maxmemory-policy is unknown (INFO memory refused or silent)" in warnings[0]
    assert "is unknown (INFO refused)" in warnings[1]
    assert _gauge("broker") == -1.0
