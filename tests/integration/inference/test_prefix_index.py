"""The prefix index in real Redis: shared by processes, forgetting after its TTL, bounded, and
standing in for itself when Redis does not answer."""

from __future__ import annotations

import logging

import pytest
import redis

from app.config import InferenceSettings, OpenAISettings, ReplicaSettings, Settings, Strategy
from app.constants import prefix_key
from app.inference.factory import build_pools
from app.inference.prefix import PrefixIndex
from app.local.processes import free_port
from tests.fixtures.backends import Clock

HASHES = [f"h{i}" for i in range(8)]


def test_two_processes_see_where_each_other_sent_a_prefix(redis_client: redis.Redis) -> None:
    one, two = PrefixIndex(redis_client, "openai"), PrefixIndex(redis_client, "openai")
    one.record(HASHES[:5], "a")
    two.record(HASHES[:2], "b")
    assert one.local.match(HASHES, ["b"]) == {"b": 0}  # not learnt by process one itself
    assert one.match(HASHES, ["a", "b", "c"]) == {"a": 5, "b": 2, "c": 0}
    assert two.match(HASHES, ["a", "b", "c"]) == {"a": 5, "b": 2, "c": 0}
    # Another backend kind's pool has an index of its own.
    assert PrefixIndex(redis_client, "triton").match(HASHES, ["a"]) == {"a": 0}


def test_entries_expire_after_the_ttl_and_the_index_stays_under_its_cap(
    redis_client: redis.Redis,
) -> None:
    clock = Clock()
    clock.now = 1_000_000.0
    index = PrefixIndex(redis_client, "openai", ttl_s=60, max_blocks=5, clock=lambda: clock.now)
    index.record(HASHES[:3], "a")
    assert 0 < redis_client.ttl(prefix_key("openai", "b:h0")) <= 60
    clock.now += 61
    assert index.match(HASHES, ["a"]) == {"a": 0}  # sent too long ago, even if not yet evicted
    index.record(HASHES, "b")  # 8 blocks into a cap of 5: the least recently sent go
    assert redis_client.zcard(prefix_key("openai", "lru")) == 5
    assert not redis_client.exists(prefix_key("openai", "b:h0"))
    assert index.match(HASHES[3:], ["b"]) == {"b": 5}


def test_unreachable_redis_falls_back_to_the_process_index_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    index = PrefixIndex(down, "openai")
    with caplog.at_level(logging.WARNING, logger="app.inference.prefix"):
        index.record(HASHES[:4], "a")
        assert index.match(HASHES, ["a", "b"]) == {"a": 4, "b": 0}
        index.record(HASHES[:2], "b")
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1


def test_a_flushed_script_cache_is_reloaded(redis_client: redis.Redis) -> None:
    index = PrefixIndex(redis_client, "openai")
    index.record(HASHES[:2], "a")
    redis_client.script_flush()
    assert index.match(HASHES, ["a"]) == {"a": 2}


def test_worker_pools_share_the_index_in_redis_only_when_an_agent_routes_by_prefix(
    redis_client: redis.Redis, redis_url: str
) -> None:
    replicas = [ReplicaSettings(url="http://127.0.0.1:9/v1")]
    settings = Settings(
        redis_url=redis_url,
        openai=OpenAISettings(replicas=replicas),
        inference=InferenceSettings(agent_strategies={"coder": Strategy.PREFIX}),
    )
    pools = build_pools(settings)
    try:
        pools["openai"].prefix.record(HASHES[:1], "http://127.0.0.1:9/v1")
        assert redis_client.exists(prefix_key("openai", "b:h0"))
        assert pools["triton"].prefix.client is not None
    finally:
        for pool in pools.values():
            pool.close()
    plain = build_pools(settings.model_copy(update={"inference": InferenceSettings()}))
    try:
        assert all(pool.prefix.client is None for pool in plain.values())
    finally:
        for pool in plain.values():
            pool.close()


def test_every_process_sees_what_each_replica_holds_until_the_ttl(
    redis_client: redis.Redis,
) -> None:
    clock = Clock()
    clock.now = 2_000_000.0
    one = PrefixIndex(redis_client, "openai", ttl_s=60, max_blocks=5, clock=lambda: clock.now)
    two = PrefixIndex(redis_client, "openai", ttl_s=60, max_blocks=5, clock=lambda: clock.now)
    one.record(HASHES[:3], "a")
    clock.now += 30
    two.record(HASHES[5:7], "b")
    two.record(HASHES[:2], "b")  # the shared start of a conversation, sent to b too
    assert one.lookup(HASHES, ["a", "b", "c"]) == (
        {"a": 3, "b": 2, "c": 0},
        {"a": 3, "b": 4, "c": 0},
    )
    assert one.lookup([], ["a"]) == ({"a": 0}, {"a": 3})  # a short request still sees the load
    two.record(HASHES[3:6], "b")  # 6 blocks, over the cap of 5: b holds its 5 most recent
    assert two.lookup([], ["b"])[1] == {"b": 5}
    clock.now += 31  # a's blocks were sent 61 s ago
    assert two.lookup(HASHES, ["a", "b"])[1] == {"a": 0, "b": 5}


def test_the_process_index_counts_what_each_replica_holds_too() -> None:
    clock = Clock()
    clock.now = 100.0
    index = PrefixIndex(None, "openai", ttl_s=60, clock=lambda: clock.now)
    index.record(HASHES[:3], "a")
    index.record(HASHES[:2], "b")
    assert index.lookup(HASHES, ["a", "b"]) == ({"a": 3, "b": 2}, {"a": 3, "b": 2})
    clock.now += 61
    assert index.lookup(HASHES, ["a", "b"]) == ({"a": 0, "b": 0}, {"a": 0, "b": 0})
