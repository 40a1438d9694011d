"""The worker's fetch: as many messages as its prefetch room in one round trip, each one
recorded as unacknowledged by the same script, in the order they were published."""

from __future__ import annotations

import contextlib

import pytest
from kombu import Consumer, Exchange, Producer, Queue

from app.celery_ext.app import create_celery
from app.celery_ext.transport import ack_on, acked
from app.config import Settings

pytestmark = pytest.mark.integration

QUEUE = Queue("agent.fetch-test", Exchange("agent.fetch-test", type="direct"), "agent.fetch-test")


def publish(conn, count: int) -> None:
    """``count`` messages {"n": 0}, {"n": 1} ... on the test queue."""
    producer = Producer(conn.default_channel, serializer="json")
    for n in range(count):
        producer.publish(
            {"n": n}, exchange=QUEUE.exchange, routing_key=QUEUE.routing_key, declare=[QUEUE]
        )


def test_one_fetch_fills_the_prefetch_room_and_records_each_message(redis_url, redis_client):
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    got: list[int] = []
    messages = []

    def on_message(body, message) -> None:
        got.append(body["n"])
        messages.append(message)

    with app.connection_for_write() as conn:
        publish(conn, 10)
        channel = conn.channel()
        with Consumer(channel, [QUEUE], callbacks=[on_message], accept=["json"]) as consumer:
            consumer.qos(prefetch_count=4)
            conn.drain_events(timeout=2)
            assert got == [0, 1, 2, 3]  # one event, four messages, oldest first
            assert redis_client.hlen("unacked") == redis_client.zcard("unacked_index") == 4
            assert redis_client.llen(QUEUE.name) == 6

            for message in messages[:3]:
                message.ack()
            conn.drain_events(timeout=2)
            assert got == list(range(7))  # the room the acks made, no more
            assert redis_client.hlen("unacked") == 4

            for message in messages[3:]:
                message.ack()
            while len(got) < 10:
                conn.drain_events(timeout=2)
            assert got == list(range(10))
            for message in messages[7:]:
                message.ack()
        assert redis_client.hlen("unacked") == 0 and redis_client.llen(QUEUE.name) == 0
        channel.close()
    app.close()


def test_a_message_acknowledged_in_a_steps_pipeline_is_not_acknowledged_twice(
    redis_url, redis_client
):
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    messages = []
    with app.connection_for_write() as conn:
        publish(conn, 2)
        channel = conn.channel()
        with Consumer(channel, [QUEUE], callbacks=[lambda _b, m: messages.append(m)]) as consumer:
            consumer.qos(prefetch_count=2)
            conn.drain_events(timeout=2)
            first, second = messages
            with redis_client.pipeline() as pipe:
                ack_on(pipe, first.delivery_tag)
                pipe.set("handed-on", 1)
                pipe.execute()
            acked(first.delivery_tag)
            assert redis_client.hkeys("unacked") == [second.delivery_tag.encode()]

            # kombu's ack of it must not touch Redis again: an entry put back under the same
            # tag (as a redelivered copy would be) stays.
            redis_client.hset("unacked", first.delivery_tag, "copy")
            first.ack()
            assert redis_client.hget("unacked", first.delivery_tag) == b"copy"
            assert channel.qos.can_consume()  # its prefetch room is given back all the same

            second.ack()  # acknowledged the usual way
            assert redis_client.hkeys("unacked") == [first.delivery_tag.encode()]
        channel.close()
    app.close()


OTHER = Queue(
    "agent.fetch-other", Exchange("agent.fetch-other", type="direct"), "agent.fetch-other"
)


@pytest.mark.parametrize(("queues", "longest"), [([QUEUE], 1.0), ([QUEUE, OTHER], 0.1)])
def test_an_idle_consumer_of_several_queues_looks_at_each_often(
    redis_url, redis_client, monkeypatch, queues, longest
):
    """The idle wait (BLMOVE) wakes for the channel's first queue only: with several queues it
    is short, so a message on another (a sub-agent run's, its parent's next step) is not left
    waiting for brpop_timeout (1 s)."""

    import redis.connection

    sent: list[tuple] = []
    real = redis.connection.Connection.send_command

    def spy(self, *args, **kwargs):
        if args and args[0] == "BLMOVE":
            sent.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(redis.connection.Connection, "send_command", spy)
    app = create_celery(Settings(_env_file=None, redis_url=redis_url))
    with app.connection_for_write() as conn:
        channel = conn.channel()
        with Consumer(channel, queues, accept=["json"]) as consumer:
            consumer.qos(prefetch_count=4)
            for _ in range(3):  # a fetch that finds nothing, then the waits
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=1.5)
        channel.close()
    app.close()
    assert sent, "the idle consumer sent no wait"
    assert max(float(args[-1]) for args in sent) == longest
