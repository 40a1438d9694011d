"""The Redis transport keeps one client per channel (kombu builds one per ack otherwise)."""

from __future__ import annotations

from app.celery_ext.app import create_celery
from app.celery_ext.transport import SentinelTransport, Transport, acks_in_pipelines
from app.config import Settings


def test_agentq_apps_use_the_transport_for_redis_brokers() -> None:
    app = create_celery(Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/13"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.as_uri().startswith("redis://")  # URLs read as usual


def test_sentinel_brokers_use_the_transport_with_the_master_name_of_the_settings() -> None:
    url = "sentinel://127.0.0.1:26379/2;sentinel://127.0.0.1:26380/2"
    app = create_celery(Settings(_env_file=None, redis_url=url, redis_sentinel_master="queues"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, SentinelTransport)
        assert conn.transport_options["master_name"] == "queues"
        assert "queued_ttl_s" in SentinelTransport.Channel.from_transport_options
        assert "master_name" in SentinelTransport.Channel.from_transport_options
    assert app.conf.result_backend_transport_options["master_name"] == "queues"
    app.close()


def test_steps_ack_in_their_pipeline_only_when_the_broker_is_that_redis() -> None:
    sentinel = "sentinel://s1:26379/0"
    assert acks_in_pipelines(sentinel, sentinel, {})
    assert acks_in_pipelines("redis://r:6379/0", "redis://r:6379/0", {})
    assert not acks_in_pipelines(sentinel, "redis://r:6379/0", {})
    assert not acks_in_pipelines(sentinel, sentinel, {"global_keyprefix": "x:"})


def test_a_channel_reuses_its_client_until_its_pool_changes(redis_url: str) -> None:
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first.ping()
        channel._pool = None  # kombu drops its pool after a connection error
        with channel.conn_or_acquire() as third:
            assert third is not first
            assert third.connection_pool is channel.pool
            assert third.ping()
    app.close()
