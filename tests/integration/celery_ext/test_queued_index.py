"""The queued-runs index on real Redis: written with a run's first message by submit() (the
transport's publish) and submit_many() (its pipeline), read newest first, pruned by age."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from app.celery_ext import queued
from app.celery_ext.app import create_celery
from app.config import Settings
from app.constants import QUEUED_AGENTS, QUEUED_RUNS, TASK_RUN_AGENT, queued_key
from app.producer.submit import submit, submit_many

AGENTS = {"agents": [{"name": "echo", "backend": "echo"}, {"name": "other", "backend": "echo"}]}


@pytest.fixture
def celery(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator[Celery]:
    agents = tmp_path / "agents.yaml"
    agents.write_text(yaml.safe_dump(AGENTS))
    settings = Settings(
        _env_file=None,
        redis_url=redis_url,
        database_url=f"sqlite:///{tmp_path / 'q.sqlite3'}",
        agents_file=agents,
    )
    app = create_celery(settings)
    yield app
    app.close()


def _ids(client: redis.Redis, agent: str) -> list[str]:
    return [m.decode() for m in client.zrevrange(queued_key(agent), 0, -1)]


def test_submit_indexes_the_run_with_its_first_message(
    celery: Celery, redis_client: redis.Redis
) -> None:
    run = submit("echo", "hi", "s-1", stream=True, celery=celery)
    assert redis_client.llen("agent.echo") == 1
    found = queued.find(redis_client, run.id)
    assert found is not None
    assert (found.agent, found.session_id, found.stream) == ("echo", "s-1", True)
    assert _ids(redis_client, "echo") == [run.id]
    assert redis_client.smembers(QUEUED_AGENTS) == {b"echo"}
    # Every key expires on its own (limits.queued_ttl_s), however the runs end.
    ttl = Settings(_env_file=None).limits.queued_ttl_s
    for key in (QUEUED_RUNS, QUEUED_AGENTS, queued_key("echo")):
        assert 0 < redis_client.ttl(key) <= ttl


def test_submit_many_indexes_every_run_in_submit_order(
    celery: Celery, redis_client: redis.Redis
) -> None:
    items = [{"agent": "echo", "input": f"n{i}"} for i in range(5)]
    items.append({"agent": "other", "input": "x", "session_id": "s-2"})
    results = submit_many(items, celery=celery, batch_size=2)
    assert _ids(redis_client, "echo") == list(reversed(results.ids[:5]))  # newest first
    assert _ids(redis_client, "other") == [results.ids[5]]
    other = queued.find(redis_client, results.ids[5])
    assert other is not None and other.session_id == "s-2" and not other.stream
    assert queued.agents(redis_client) == ["echo", "other"]
    # Only a run with a session or stream has a hash entry: plain runs cost one write each.
    assert redis_client.hkeys(QUEUED_RUNS) == [results.ids[5].encode()]
    plain = queued.find(redis_client, results.ids[0])
    assert plain is not None and (plain.agent, plain.session_id) == ("echo", None)


def test_a_run_sent_without_submit_is_not_indexed(
    celery: Celery, redis_client: redis.Redis
) -> None:
    celery.send_task(TASK_RUN_AGENT, kwargs={"agent": "echo", "input": "hi"}, queue="agent.echo")
    assert redis_client.llen("agent.echo") == 1
    assert redis_client.hlen(QUEUED_RUNS) == 0


def test_newest_reads_before_a_mark_and_forget_removes(
    celery: Celery, redis_client: redis.Redis
) -> None:
    ids = submit_many([{"agent": "echo", "input": f"n{i}"} for i in range(250)], celery=celery).ids
    marks = list(queued.newest(redis_client, "echo", chunk=100))  # three reads of the set
    assert [run_id for _, run_id in marks] == list(reversed(ids))
    after = list(queued.newest(redis_client, "echo", below=marks[9]))
    assert after == marks[10:]
    with redis_client.pipeline() as pipe:
        queued.forget(pipe, "echo", ids[:2])
        pipe.execute()
    assert queued.find(redis_client, ids[2]) == queued.QueuedRun(ids[2], "echo", marks[-3][0])
    assert queued.find(redis_client, ids[0]) is None
    assert list(queued.newest(redis_client, "echo", below=marks[-4])) == [marks[-3]]


def test_prune_drops_entries_older_than_the_ttl(celery: Celery, redis_client: redis.Redis) -> None:
    fresh = submit("echo", "new", celery=celery)
    redis_client.zadd(queued_key("echo"), {"old-run": queued.now_us() - 120_000_000})
    redis_client.hset(QUEUED_RUNS, "old-run", queued.entry("echo", "s-1"))
    assert queued.prune(redis_client, "echo", ttl_s=60) == 1
    assert _ids(redis_client, "echo") == [fresh.id]
    assert not redis_client.hexists(QUEUED_RUNS, "old-run")
