"""agentq's Redis clients on a sentinel:// URL follow the master through a failover."""

from __future__ import annotations

import asyncio

import pytest

from app.config import Settings
from app.errors import ConfigurationError
from app.ops.redis_clients import async_redis_client, check_redis, redis_client
from tests.fixtures.sentinel import SentinelGroup

pytestmark = pytest.mark.integration


def test_sync_and_async_clients_write_to_the_new_master_after_a_failover(
    sentinel_group: SentinelGroup,
) -> None:
    settings = Settings(_env_file=None, redis_url=sentinel_group.url)
    check_redis(settings)
    client = redis_client(settings)
    client.set("before", "1")

    async def write(key: str) -> None:
        aclient = async_redis_client(settings)
        try:
            await aclient.set(key, "1")
        finally:
            await aclient.aclose()

    asyncio.run(write("async-before"))
    old = sentinel_group.master_port()
    new = sentinel_group.failover()
    client.set("after", "1")  # the same client, its connection to the old master dropped
    asyncio.run(write("async-after"))
    with sentinel_group.server(new).client() as master:
        assert master.info("replication")["role"] == "master"
        assert master.exists("before", "after", "async-before", "async-after") == 4
    with sentinel_group.server(old).client() as demoted:
        assert demoted.info("replication")["role"] == "slave"
    client.close()


def test_an_unknown_master_name_stops_the_start_with_one_line(
    sentinel_group: SentinelGroup,
) -> None:
    settings = Settings(
        _env_file=None, redis_url=sentinel_group.url, redis_sentinel_master="not-watched"
    )
    with pytest.raises(ConfigurationError) as info:
        check_redis(settings)
    assert str(info.value) == (
        f"Redis Sentinels at {sentinel_group.url}: no Sentinel knows a master named "
        "'not-watched': set AGENTQ_REDIS_SENTINEL_MASTER to the name of "
        "`sentinel monitor <name> ...`"
    )
