"""CancelWatcher against real Redis: a run's cancellation (its key set, its id published on the
channel) sets the event of each watch of that run, also when it came before the watch started
or while Redis was restarting."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from app.constants import CANCEL_CHANNEL, cancel_key
from app.local.redis import RedisServer
from app.tasks.cancel_watch import CancelWatcher
from tests.fixtures.waiting import wait_for

pytestmark = pytest.mark.integration


def cancel(client: redis.Redis, run_id: str) -> None:
    """What a cancellation does: the key first, then the message."""
    client.set(cancel_key(run_id), 1)
    client.publish(CANCEL_CHANNEL, run_id)


@pytest.fixture
def watcher(redis_client: redis.Redis) -> Iterator[CancelWatcher]:
    w = CancelWatcher(redis_client)
    yield w
    w.close()


def subscribed(client: redis.Redis) -> bool:
    return bool(client.pubsub_numsub(CANCEL_CHANNEL)[0][1])


def test_a_published_cancellation_sets_the_runs_event_only(
    watcher: CancelWatcher, redis_client: redis.Redis
) -> None:
    with watcher.watch("run-a") as a, watcher.watch("run-b") as b:
        wait_for(lambda: subscribed(redis_client), 5, "the watcher to subscribe")
        assert not a.is_set()
        redis_client.publish(CANCEL_CHANNEL, "run-a")  # the message alone, no key
        wait_for(a.is_set, 5, "run-a's event")
        assert not b.is_set()
    assert watcher.watched() == []


def test_a_cancellation_asked_before_the_watch_sets_the_event_at_once(
    watcher: CancelWatcher, redis_client: redis.Redis
) -> None:
    with watcher.watch("other") as other:
        wait_for(lambda: subscribed(redis_client), 5, "the watcher to subscribe")
        cancel(redis_client, "run-a")  # published while nobody watches run-a
        redis_client.publish(CANCEL_CHANNEL, "other")
        wait_for(other.is_set, 5, "the other run's event")  # run-a's message was read before
    # Only the key is left to tell.
    with watcher.watch("run-a", check_key=True) as a, watcher.watch("run-b") as b:
        wait_for(a.is_set, 5, "run-a's event from its key")
        assert not b.is_set()


def test_two_watches_of_one_run_are_both_told(
    watcher: CancelWatcher, redis_client: redis.Redis
) -> None:
    with watcher.watch("run-a") as first, watcher.watch("run-a") as second:
        wait_for(lambda: subscribed(redis_client), 5, "the watcher to subscribe")
        cancel(redis_client, "run-a")
        wait_for(lambda: first.is_set() and second.is_set(), 5, "both events")


def test_a_watch_that_ended_is_not_told(watcher: CancelWatcher, redis_client: redis.Redis) -> None:
    with watcher.watch("run-a") as a:
        wait_for(lambda: subscribed(redis_client), 5, "the watcher to subscribe")
    with watcher.watch("run-b") as b:
        cancel(redis_client, "run-a")
        cancel(redis_client, "run-b")
        wait_for(b.is_set, 5, "run-b's event")
    assert not a.is_set()


def test_close_stops_the_thread(redis_client: redis.Redis) -> None:
    watcher = CancelWatcher(redis_client)
    with watcher.watch("run-a"):
        wait_for(lambda: subscribed(redis_client), 5, "the watcher to subscribe")
    thread = watcher._thread
    assert thread is not None and thread.is_alive()
    watcher.close()
    # Its own thread ends (the channel may have other subscribers: other tests' workers).
    wait_for(lambda: not thread.is_alive(), 5, "the watcher's thread to end")


def test_a_cancellation_missed_while_redis_restarted_is_not_lost() -> None:
    server = RedisServer().start()
    client = server.client()
    watcher = CancelWatcher(client)
    try:
        with watcher.watch("run-a") as a, watcher.watch("run-b") as b:
            wait_for(lambda: subscribed(client), 5, "the watcher to subscribe")
            server.stop()
            server.start()  # same port, no data kept
            # Set while the watcher was away (its message went to nobody): the key tells it.
            client.set(cancel_key("run-a"), 1)
            wait_for(a.is_set, 15, "run-a's event after the restart")
            wait_for(lambda: subscribed(client), 5, "the watcher to subscribe again")
            client.publish(CANCEL_CHANNEL, "run-b")
            wait_for(b.is_set, 5, "run-b's event from a message after the restart")
    finally:
        watcher.close()
        client.close()
        server.stop()
