"""The Redis transport loses no message: not to a consumer that dies mid-fetch, not to a lost
connection (found by tests/e2e/test_chaos.py; stock kombu fails both)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.celery_ext.app import create_celery
from app.config import Settings, WorkerSettings
from app.constants import TASK_RUN_AGENT
from app.local.processes import wait_until
from app.local.redis import RedisServer

pytestmark = pytest.mark.integration

QUEUE = "agent.coder"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


def app_for(server: RedisServer):
    settings = Settings(
        _env_file=None, redis_url=server.url, worker=WorkerSettings(visibility_timeout_s=1)
    )
    app = create_celery(settings)
    app.tasks[TASK_RUN_AGENT].apply_async(kwargs={"agent": "coder", "input": "hi"}, queue=QUEUE)
    return app


def test_a_message_handed_to_a_consumer_that_dies_unread_comes_back(server) -> None:
    app, client = app_for(server), server.client()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        channel.basic_consume(QUEUE, no_ack=False, callback=lambda m: None, consumer_tag="c")
        channel.client.connection = channel.client.connection_pool.get_connection()
        channel._brpop_start()  # the fetch is sent and served...
        assert wait_until(lambda: client.llen(QUEUE) == 0, 5)
        channel.client.connection.disconnect()  # ...but the consumer dies before reading it
    # Taken and recorded in one step (kombu's BRPOP then HSET would have lost it here).
    assert client.hlen("unacked") == 1

    with app.connection_for_read() as conn:

        def restored() -> bool:  # every worker sweeps like this, every quarter timeout
            conn.default_channel.qos.restore_visible(interval=1)
            return client.llen(QUEUE) == 1

        assert wait_until(restored, 10)  # back once its visibility timeout has passed
    assert client.hlen("unacked") == 0
    app.close()


def test_a_channel_closed_after_its_connection_was_collected_restores_its_messages(
    server,
) -> None:
    app, client = app_for(server), server.client()
    got = []
    conn = app.connection_for_read()
    channel = conn.default_channel
    channel.basic_consume(QUEUE, no_ack=False, callback=got.append, consumer_tag="c")
    conn.drain_events(timeout=5)
    assert len(got) == 1 and client.hlen("unacked") == 1
    # After a lost broker connection Celery collects the kombu connection, which detaches
    # the transport, and a channel whose close failed then is closed again (seen in a worker
    # whose Redis restarted): kombu alone raises AttributeError, and the worker dies.
    conn.transport.client = None
    channel.close()
    assert client.llen(QUEUE) == 1 and client.hlen("unacked") == 0  # back on its queue
    app.close()
