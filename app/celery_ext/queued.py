"""The index of queued runs: runs submitted whose first step is not in the session store yet.

The store has no row for a run until its first step commits, and submitting writes no SQL.
So the producer records each new run in Redis in the MULTI that pushes its first message
(``submit_many``'s pipeline, and the transport's publish of a message marked
:data:`~app.celery_ext.envelope.NEW_RUN`: :func:`add`), and the worker drops it once the
run's first step commits or the run ends (:func:`forget`, best effort). Readers
(:mod:`app.ops.runs`) treat an entry whose run the store has as gone, and drop entries older
than ``limits.queued_ttl_s``.

On the broker's Redis, next to the queues:

- :data:`~app.constants.QUEUED_AGENTS`: the agent types that have had queued runs;
- :func:`~app.constants.queued_key` of each: a sorted set of its run ids by submit time in
  microseconds (one batch's runs a microsecond apart, in submit order);
- :data:`~app.constants.QUEUED_RUNS`: run id -> its agent, session and ``stream`` as compact
  JSON, for the runs that have a session or stream only (one write per run less for the
  others: the enqueue path pays for every command).

A run sent without the marker (``send_task`` from another service) is not indexed: it is
listed once its first step is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring_ascii as _string
from typing import Any

from app.constants import QUEUED_AGENTS, QUEUED_RUNS, queued_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def now_us() -> int:
    """Unix time in microseconds (an index score)."""
    return time.time_ns() // 1000


def us_of(when: datetime) -> int:
    """``when`` in Unix microseconds, exactly."""
    return (when - EPOCH) // _US


def datetime_of(us: int) -> datetime:
    """Unix microseconds ``us`` as a UTC datetime, exactly."""
    return EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A run in the index: what is known of it before its first step is stored."""

    id: str
    agent: str
    submitted_us: int  # Unix time in microseconds
    session_id: str | None = None
    stream: bool = False

    @property
    def submitted_at(self) -> datetime:
        """When it was submitted (UTC)."""
        return datetime_of(self.submitted_us)


def entry(agent: str, session_id: str | None = None, stream: bool = False) -> str | None:
    """A run's value in :data:`QUEUED_RUNS`; None for a run without session or stream (it
    has none)."""
    if session_id is None and not stream:
        return None
    text = f'{{"agent":{_string(agent)}'
    if session_id is not None:
        text += f',"session_id":{_string(session_id)}'
    return text + (',"stream":true}' if stream else "}")


def parse(run_id: str, agent: str, submitted_us: int, raw: bytes | str | None) -> QueuedRun:
    """The run whose :func:`entry` is ``raw`` (None: it has none)."""
    data = {} if raw is None else json.loads(raw)
    return QueuedRun(run_id, agent, submitted_us, data.get("session_id"), bool(data.get("stream")))


def add(
    pipe: Any, runs: Mapping[str, Mapping[str, int]], entries: Mapping[str, str], ttl_s: int
) -> None:
    """Queue on ``pipe`` (the MULTI that pushes the runs' messages) the index writes of
    ``runs`` (agent -> {run id: submit time in us}) with the :func:`entry` of those that have
    one (run id -> text). Each key lives ``ttl_s`` past its last write."""
    if entries:
        pipe.hset(QUEUED_RUNS, mapping=entries)
        pipe.expire(QUEUED_RUNS, ttl_s)
    pipe.sadd(QUEUED_AGENTS, *runs)
    pipe.expire(QUEUED_AGENTS, ttl_s)
    for agent, scores in runs.items():
        key = queued_key(agent)
        pipe.zadd(key, scores)
        pipe.expire(key, ttl_s)


def add_one(pipe: Any, run_id: str, kwargs: Mapping[str, Any], ttl_s: int) -> None:
    """:func:`add` for one run from its first message's keyword arguments."""
    agent, session_id = str(kwargs.get("agent")), kwargs.get("session_id")
    text = entry(
        agent, session_id if isinstance(session_id, str) else None, bool(kwargs.get("stream"))
    )
    add(pipe, {agent: {run_id: now_us()}}, {} if text is None else {run_id: text}, ttl_s)


def forget(pipe: Any, agent: str, run_ids: Iterable[str]) -> None:
    """Queue on ``pipe`` the removal of ``run_ids`` (runs of ``agent``) from the index."""
    ids = list(run_ids)
    if ids:
        pipe.zrem(queued_key(agent), *ids)
        pipe.hdel(QUEUED_RUNS, *ids)


def find(client: Any, run_id: str) -> QueuedRun | None:
    """The queued run ``run_id``, or None (not queued, or not indexed)."""
    raw = client.hget(QUEUED_RUNS, run_id)
    names = agents(client) if raw is None else [json.loads(raw)["agent"]]
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zscore(queued_key(name), run_id)
        scores = pipe.execute()
    for name, score in zip(names, scores, strict=True):
        if score is not None:
            return parse(run_id, name, int(score), raw)
    return None


def runs_of(client: Any, marks: list[tuple[int, str, str]]) -> list[QueuedRun]:
    """The runs of ``marks`` ((submit time in us, run id, agent)), in order."""
    if not marks:
        return []
    raws = client.hmget(QUEUED_RUNS, [run_id for _, run_id, _ in marks])
    return [
        parse(run_id, agent, at, raw) for (at, run_id, agent), raw in zip(marks, raws, strict=True)
    ]


def agents(client: Any) -> list[str]:
    """The agent types that have an index (sorted)."""
    return sorted(_text(name) for name in client.smembers(QUEUED_AGENTS))


def newest(
    client: Any, agent: str, below: tuple[int, str] | None = None, chunk: int = 200
) -> Iterator[tuple[int, str]]:
    """``agent``'s (submit time in us, run id), newest first, those before ``below`` only
    (by time, then id), read ``chunk`` at a time."""
    key, high, offset = queued_key(agent), "+inf" if below is None else below[0], 0
    while True:
        got = client.zrevrangebyscore(key, high, "-inf", start=offset, num=chunk, withscores=True)
        for member, score in got:
            mark = (int(score), _text(member))
            if below is None or mark < below:
                yield mark
        if len(got) < chunk:
            return
        offset += chunk


def prune(client: Any, agent: str, ttl_s: int) -> int:
    """Drop ``agent``'s entries submitted more than ``ttl_s`` ago; how many."""
    key, cutoff = queued_key(agent), now_us() - ttl_s * 1_000_000
    stale = client.zrangebyscore(key, "-inf", f"({cutoff}")
    if stale:
        with client.pipeline(transaction=True) as pipe:
            forget(pipe, agent, map(_text, stale))
            pipe.execute()
    return len(stale)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
