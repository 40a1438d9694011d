"""The queued-runs index on real Redis: written with a run's first message by submit() (the
transport's publish) and submit_many() (its pipeline), read newest first, pruned by age."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from app.celery_ext import queued
from app.celery_ext.app import create_celery
from app.celery_ext.envelope import new_id, new_ids
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
    return [m.decode() for m in client.lrange(queued_key(agent), 0, -1)]


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
    old = queued.now_us() - 120_000_000  # a run id given by its caller: its entry has the time
    redis_client.rpush(queued_key("echo"), "old-run")  # the oldest end
    redis_client.hset(QUEUED_RUNS, "old-run", queued.entry("echo", "s-1", at=old))
    assert queued.prune(redis_client, "echo", ttl_s=60) == 1
    assert _ids(redis_client, "echo") == [fresh.id]
    assert not redis_client.hexists(QUEUED_RUNS, "old-run")


def test_a_run_id_given_by_the_caller_keeps_its_submit_time_in_its_entry(
    celery: Celery, redis_client: redis.Redis
) -> None:
    before = queued.now_us()
    results = submit_many(
        [{"agent": "echo", "input": "a", "run_id": "mine-1"}, {"agent": "echo", "input": "b"}],
        celery=celery,
    )
    mine = queued.find(redis_client, "mine-1")
    assert mine is not None and before <= mine.submitted_us <= queued.now_us()
    assert redis_client.hkeys(QUEUED_RUNS) == [b"mine-1"]  # the UUIDv7 one needs no entry
    plain = queued.find(redis_client, results.ids[1])
    assert plain is not None and plain.submitted_us == queued.time_of(results.ids[1])


def test_newest_gives_pages_in_time_order_when_batches_land_out_of_order(
    redis_client: redis.Redis,
) -> None:
    """Two producers: the one whose ids are older pushes last, amid the other's runs."""
    ids = list(itertools.islice(new_ids(), 300))  # in increasing order
    late, early = ids[:150], ids[150:]  # ``late`` made first, pushed after ``early``
    with redis_client.pipeline() as pipe:
        queued.add(pipe, {"echo": early[:100]}, {}, 60)
        queued.add(pipe, {"echo": late}, {}, 60)
        queued.add(pipe, {"echo": early[100:]}, {}, 60)
        pipe.execute()
    marks = list(queued.newest(redis_client, "echo", chunk=16))
    assert [run_id for _, run_id in marks] == list(reversed(ids))
    pages, below = [], None
    while True:  # pages of 7, each after the last one's mark
        page = list(itertools.islice(queued.newest(redis_client, "echo", below, chunk=16), 7))
        if not page:
            break
        pages += page
        below = page[-1]
    assert pages == marks


def test_forget_and_prune_work_from_the_oldest_end(redis_client: redis.Redis) -> None:
    old = queued.now_us() - 120_000_000
    stale = [f"old-{n}" for n in range(5)]
    fresh = [new_id() for _ in range(3)]
    with redis_client.pipeline() as pipe:
        queued.add(
            pipe,
            {"echo": stale},
            {r: queued.entry("echo", at=old + n) for n, r in enumerate(stale)},
            60,
        )
        queued.add(pipe, {"echo": fresh}, {}, 60)
        queued.forget(pipe, "echo", [fresh[0], stale[0]])
        pipe.execute()
    assert _ids(redis_client, "echo") == [*reversed(fresh[1:]), *reversed(stale[1:])]
    assert queued.find(redis_client, stale[0]) is None
    assert queued.prune(redis_client, "echo", ttl_s=60, chunk=2) == 4
    assert _ids(redis_client, "echo") == list(reversed(fresh[1:]))
    assert redis_client.hlen(QUEUED_RUNS) == 0
