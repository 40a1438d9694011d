"""What a starting worker makes of a Redis's eviction policy and persistence (pure)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.ops.redis_durability import Durability, assess, parse, roles

WHERE = "redis://redis:6379/0"
KEEPS = Durability(policy="noeviction", aof=True, save="")


def test_info_and_the_save_rules_say_whether_redis_writes_to_disk() -> None:
    memory = {"maxmemory_policy": "volatile-lru", "used_memory": 1024}
    assert parse(memory, {"aof_enabled": 0}, "3600 1 300 100").persistent is True
    assert parse(memory, {"aof_enabled": 1}, None).persistent is True
    assert parse(memory, {"aof_enabled": 0}, "").persistent is False
    # A managed service refusing CONFIG: AOF off says nothing of its snapshots.
    assert parse(memory, {"aof_enabled": 0}, None).persistent is None
    assert parse(None, None, None) == Durability(policy=None, aof=None, save=None)
    assert parse(memory, None, None).policy == "volatile-lru"


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-lfu"])
def test_any_eviction_on_the_broker_or_state_redis_is_refused_with_what_to_do(policy) -> None:
    for served in (["broker"], ["state"], ["broker", "state", "results"]):
        refusal, _ = assess(WHERE, served, Durability(policy=policy, aof=True, save=""))
        assert refusal is not None
        assert refusal.startswith(f"Redis at {WHERE} ({', '.join(served)}) has ")
        assert f"maxmemory-policy {policy}: under memory pressure it would evict" in refusal
        assert "`CONFIG SET maxmemory-policy noeviction`" in refusal
        assert "parameter group" in refusal


def test_a_redis_that_holds_only_results_may_evict_with_a_warning() -> None:
    refusal, warnings = assess(WHERE, ["results"], Durability("allkeys-lru", True, ""))
    assert refusal is None
    assert warnings == [
        f"Redis at {WHERE} (results) has maxmemory-policy allkeys-lru: it may evict run "
        "results not yet read (the session store keeps the answers); set noeviction to keep "
        "them"
    ]


def test_noeviction_and_a_disk_copy_raise_nothing() -> None:
    assert assess(WHERE, ["broker", "state", "results"], KEEPS) == (None, [])


def test_persistence_off_or_unknown_is_a_warning_not_a_refusal() -> None:
    refusal, warnings = assess(WHERE, ["broker"], Durability("noeviction", False, ""))
    assert refusal is None
    assert warnings == [
        f"Redis at {WHERE} (broker) keeps no data on disk (appendonly no, no save rule): a "
        "restart loses queued steps, leases and markers; set appendonly yes, or give it a "
        "replica"
    ]
    refusal, warnings = assess(WHERE, ["broker"], Durability("noeviction", False, None))
    assert refusal is None and len(warnings) == 1
    assert warnings[0] == (
        f"Redis at {WHERE} (broker): whether a restart keeps queued steps, leases and markers "
        "is unknown (AOF off, CONFIG GET save refused); check its persistence or replicas"
    )


def test_an_unreadable_policy_is_a_warning() -> None:
    refusal, warnings = assess(WHERE, ["broker"], Durability(None, True, ""))
    assert refusal is None
    assert len(warnings) == 1 and "maxmemory-policy is unknown" in warnings[0]


def test_each_redis_is_checked_once_for_every_role_it_serves() -> None:
    one = Settings(_env_file=None, redis_url="redis://r:6379/0")
    assert roles(one) == {"redis://r:6379/0": ["broker", "state", "results"]}
    split = Settings(
        _env_file=None,
        redis_url="redis://r:6379/0",
        broker_url="redis://q:6379/0",
        result_backend="redis://r:6379/1",
    )
    assert roles(split) == {
        "redis://q:6379/0": ["broker"],
        "redis://r:6379/0": ["state"],
        "redis://r:6379/1": ["results"],
    }
