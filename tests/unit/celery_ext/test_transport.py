"""The Redis transport keeps one client per channel (kombu builds one per ack otherwise)."""

from __future__ import annotations

from app.celery_ext.app import create_celery
from app.celery_ext.transport import Transport
from app.config import Settings


def test_agentq_apps_use_the_transport_for_redis_brokers() -> None:
    app = create_celery(Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/13"))
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)
        assert conn.as_uri().startswith("redis://")  # URLs read as usual


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
