"""Backlog arithmetic: every priority list plus the unacked messages routed to the queue."""

from __future__ import annotations

import json

import fakeredis

from app.celery_ext.backlog import (
    Backlog,
    count_backlog,
    default_routes,
    eta_of,
    priority_lists,
    read_backlog,
    unacked_queue,
)

Q = "agent.research"


def entry(queue: str, exchange: str | None = None, eta: str | None = None) -> str:
    """An ``unacked`` hash value as kombu writes it: [message, exchange, routing_key]."""
    message = {"body": "e30=", "headers": {"eta": eta}, "properties": {}}
    return json.dumps([message, queue if exchange is None else exchange, queue])


def test_priority_lists_follow_kombus_naming() -> None:
    assert priority_lists(Q) == [Q, f"{Q}\x06\x163", f"{Q}\x06\x166", f"{Q}\x06\x169"]
    assert priority_lists(Q, steps=[0, 5], sep=":") == [Q, f"{Q}:5"]


def test_backlog_sums_every_priority_list_and_the_queues_unacked_messages() -> None:
    routes = default_routes([Q, "agent.coder"])
    unacked = [entry(Q), entry(Q), entry("agent.coder"), entry(Q, exchange="")]
    result = count_backlog({Q: [4, 0, 2, 1], "agent.coder": [0, 0, 0, 0]}, unacked, routes)
    assert result[Q] == Backlog(ready=7, unacked=3)
    assert result[Q].total == 10
    assert result["agent.coder"] == Backlog(ready=0, unacked=1)


def test_unacked_messages_of_other_queues_or_unreadable_ones_do_not_count() -> None:
    routes = default_routes([Q])
    assert unacked_queue(entry("celery"), routes) is None
    assert unacked_queue(entry(Q, exchange="other"), routes) is None
    assert unacked_queue(b"not json", routes) is None
    assert unacked_queue(json.dumps({"a": 1}), routes) is None
    assert count_backlog({Q: [1]}, [entry("celery"), b"{"], routes) == {Q: Backlog(1, 0)}


def test_an_empty_queue_has_no_backlog() -> None:
    assert count_backlog({Q: [0, 0, 0, 0]}, [], default_routes([Q]))[Q].total == 0


def test_read_backlog_reads_lists_and_hash_in_one_snapshot_and_pages_big_hashes() -> None:
    client = fakeredis.FakeRedis()
    client.lpush(Q, "m1", "m2")
    client.lpush(f"{Q}\x06\x169", "m3")
    client.hset("unacked", mapping={"tag1": entry(Q), "tag2": entry("agent.other")})
    assert read_backlog(client, [Q]) == {Q: Backlog(ready=3, unacked=1)}
    # Past the snapshot limit the hash is read with HSCAN: same count.
    client.hset("unacked", mapping={f"t{i}": entry(Q) for i in range(1500)})
    assert read_backlog(client, [Q]) == {Q: Backlog(ready=3, unacked=1501)}


def test_unacked_messages_whose_eta_is_ahead_are_delayed_the_rest_in_flight() -> None:
    routes = default_routes([Q])
    unacked = [
        entry(Q, eta="2026-01-01T00:01:00+00:00"),  # a retry's countdown, not over
        entry(Q, eta="2026-01-01T00:00:00.000001+00:00"),  # ahead by a microsecond
        entry(Q, eta="2025-12-31T23:59:00+00:00"),  # over: running
        entry(Q),  # no countdown: running
    ]
    now = eta_of({"headers": {"eta": "2026-01-01T00:00:00+00:00"}})
    assert now is not None
    result = count_backlog({Q: [0]}, unacked, routes, now)[Q]
    assert (result.unacked, result.delayed, result.in_flight) == (4, 2, 2)
    assert count_backlog({Q: [0]}, unacked, routes)[Q].delayed == 0  # without now: not asked


def test_an_eta_without_a_zone_is_utc_and_a_bad_one_is_none() -> None:
    assert eta_of({"headers": {"eta": "1970-01-01T00:01:00"}}) == 60.0
    assert eta_of({"headers": {"eta": "soon"}}) is None
    assert eta_of({"headers": {"eta": None}}) is None
    assert eta_of({"headers": None}) is None
    assert eta_of("text") is None
