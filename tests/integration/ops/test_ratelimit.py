"""The shared rate limit on real Redis: a burst goes through, the next request is told how
long to wait and goes through after that wait; every client of the Redis shares one count."""

from __future__ import annotations

import time

import pytest
import redis

from app.constants import rate_limit_key
from app.ops.ratelimit import Rate, take

pytestmark = pytest.mark.integration

RATE = Rate(per_s=2, burst=3)


def test_a_burst_goes_through_then_a_request_waits_the_time_it_is_told(
    redis_client: redis.Redis,
) -> None:
    burst = [take(redis_client, "k", RATE) for _ in range(RATE.burst)]
    assert [(d.allowed, d.remaining) for d in burst] == [(True, 2), (True, 1), (True, 0)]
    refused = take(redis_client, "k", RATE)
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 1 / RATE.per_s
    assert not take(redis_client, "k", RATE).allowed  # a refusal takes nothing: still waiting
    time.sleep(refused.retry_after_s)
    assert take(redis_client, "k", RATE).allowed


def test_every_client_of_the_redis_counts_against_one_limit(redis_url: str) -> None:
    first, second = redis.Redis.from_url(redis_url), redis.Redis.from_url(redis_url)
    try:
        first.flushdb()
        assert take(first, "shared", RATE).allowed
        assert take(second, "shared", RATE).allowed
        assert take(first, "shared", RATE).allowed
        assert not take(second, "shared", RATE).allowed
        assert take(second, "other", RATE).allowed  # another name, another limit
    finally:
        first.flushdb()
        first.close()
        second.close()


def test_an_idle_limit_leaves_nothing_behind(redis_client: redis.Redis) -> None:
    take(redis_client, "idle", RATE)
    ttl_ms = redis_client.pttl(rate_limit_key("idle"))
    assert 0 < ttl_ms <= 1000 / RATE.per_s  # gone once the limit is back to a full burst


def test_a_redis_that_lost_the_script_loads_it_again(redis_client: redis.Redis) -> None:
    assert take(redis_client, "flushed", RATE).allowed
    redis_client.script_flush()
    assert take(redis_client, "flushed", RATE).remaining == 1
