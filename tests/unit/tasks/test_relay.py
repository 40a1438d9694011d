"""The token relay's stream format on Redis semantics (fakeredis); live relay in integration."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from app.config import StreamSettings
from app.constants import stream_key
from app.errors import StreamTimeoutError
from app.producer.results import read_events
from app.tasks.relay import ATTEMPT, END, STEP, TOKEN, TokenRelay


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_events_read_back_in_order_up_to_the_end(client) -> None:
    relay = TokenRelay(client, StreamSettings())
    relay.attempt("acme", "r1", 0)
    for piece in ["Hel", "lo", " world"]:
        relay.token("acme", "r1", 0, piece)
    relay.step("acme", "r1", 0, "final")
    relay.end("acme", "r1", "succeeded", answer={"n": 1})
    relay.token("acme", "r1", 0, "after the end")  # never read: the reader stops at end
    events = list(read_events(client, "r1", tenant="acme", timeout_s=1))
    assert [e.kind for e in events] == [ATTEMPT, TOKEN, TOKEN, TOKEN, STEP, END]
    assert "".join(e.text for e in events if e.kind == TOKEN) == "Hello world"
    assert events[-1].data == {"status": "succeeded", "answer": {"n": 1}}
    assert events[4].data == {"kind": "final", "tool": None, "tools": []}
    assert all(e.ts_ns > 0 for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_failed_runs_end_with_their_error(client) -> None:
    relay = TokenRelay(client, StreamSettings())
    relay.end("acme", "r2", "failed", error="model call failed: boom")
    (event,) = read_events(client, "r2", tenant="acme", timeout_s=1)
    assert event.data == {"status": "failed", "error": "model call failed: boom"}


def test_a_reader_of_another_tenant_finds_no_stream(client) -> None:
    relay = TokenRelay(client, StreamSettings())
    relay.token("acme", "r6", 0, "secret")
    relay.end("acme", "r6", "succeeded", answer="secret")
    with pytest.raises(StreamTimeoutError):  # its own tenant's key holds nothing
        list(read_events(client, "r6", tenant="globex", timeout_s=0.2, block_ms=50))
    assert [e.kind for e in read_events(client, "r6", tenant="acme", timeout_s=1)][-1] == "end"


def test_the_stream_expires_and_is_capped_without_a_reader(client) -> None:
    relay = TokenRelay(client, StreamSettings(ttl_s=30, max_len=100))
    for i in range(2000):
        relay.token("acme", "r3", 0, f"t{i}")
    key = stream_key("acme", "r3")
    assert 0 < client.ttl(key) <= 30
    assert client.xlen(key) < 2000  # trimmed (approximately, as Redis does with MAXLEN ~)


def test_a_reader_gives_up_with_a_typed_error_when_the_run_never_ends(client) -> None:
    TokenRelay(client, StreamSettings()).token("acme", "r4", 0, "only")
    with pytest.raises(StreamTimeoutError, match="r4"):
        list(read_events(client, "r4", tenant="acme", timeout_s=0.2, block_ms=50))


def test_a_failing_redis_never_fails_the_step(caplog) -> None:
    dead = redis.Redis(port=1, socket_connect_timeout=0.1)  # nothing listens on port 1
    relay = TokenRelay(dead, StreamSettings())
    relay.token("acme", "r5", 0, "lost")  # must not raise
    assert "stream incomplete" in caplog.text
