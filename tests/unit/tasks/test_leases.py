import time

import fakeredis

from app.tasks.leases import RunLease


def test_one_holder_at_a_time_and_only_the_holder_releases():
    lease = RunLease(fakeredis.FakeRedis())
    assert lease.acquire("run", "a", ttl_s=10)
    assert not lease.acquire("run", "b", ttl_s=10)
    assert not lease.release("run", "b")
    assert lease.holder("run") == "a"
    assert lease.release("run", "a")
    assert lease.acquire("run", "b", ttl_s=10)


def test_an_expired_lease_can_be_taken_over():
    lease = RunLease(fakeredis.FakeRedis())
    assert lease.acquire("run", "a", ttl_s=0.05)
    time.sleep(0.1)
    assert lease.acquire("run", "b", ttl_s=10)
    assert not lease.release("run", "a")  # the old holder cannot free the new one's lease
    assert lease.holder("run") == "b"


def test_a_release_after_redis_lost_its_scripts_loads_the_script_again():
    redis = fakeredis.FakeRedis()
    lease = RunLease(redis)
    assert lease.acquire("run", "a", ttl_s=10)
    redis.script_flush()  # as a Redis restart does
    assert lease.release("run", "a")
    assert lease.holder("run") is None
