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
- :func:`~app.constants.queued_key` of each: a list of its run ids in push order (LPUSH: the
  newest at the head), the only write per run for most runs (the enqueue path pays for every
  command);
- :data:`~app.constants.QUEUED_RUNS`: run id -> its agent, session, ``stream``, tenant and
  submit time ``at`` as compact JSON, for the runs that have a session, stream or tenant
  other than the default, or an id that does not hold its submit time.

Run ids are version 7 UUIDs (:func:`~app.celery_ext.envelope.new_ids`): a run's submit time
is its id's millisecond (:func:`time_of`), one batch's ids increase in submit order. The
list is in time order but for batches that land amid another producer's; :func:`newest`
reads it from the head and gives runs newest first all the same. Runs leave roughly in
submit order, so :func:`forget` searches from the tail (LREM), as :func:`prune` does.

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

from app.constants import DEFAULT_TENANT, QUEUED_AGENTS, QUEUED_RUNS, queued_key

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_VARIANTS = frozenset("89abAB")
# How long after its id was made a run may be pushed, at most, for the listing's order: one
# producer's runs reach the list in id order, another's batch may land amid them.
SKEW_US = 2_000_000


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
    tenant: str = DEFAULT_TENANT

    @property
    def submitted_at(self) -> datetime:
        """When it was submitted (UTC)."""
        return datetime_of(self.submitted_us)


def time_of(run_id: str) -> int | None:
    """The submit time in Unix microseconds a version 7 UUID ``run_id`` holds (its
    milliseconds), or None for any other id."""
    if len(run_id) != 36 or run_id[14] != "7" or run_id[19] not in _VARIANTS:
        return None
    try:
        return int(run_id[:8] + run_id[9:13], 16) * 1000
    except ValueError:
        return None


def entry(
    agent: str,
    session_id: str | None = None,
    stream: bool = False,
    at: int | None = None,
    tenant: str = DEFAULT_TENANT,
) -> str | None:
    """A run's value in :data:`QUEUED_RUNS`: its agent, session, ``stream``, tenant (when not
    the default one), and submit time ``at`` (us) for a run whose id does not hold it; None
    for a run that needs none."""
    if session_id is None and not stream and at is None and tenant == DEFAULT_TENANT:
        return None
    text = f'{{"agent":{_string(agent)}'
    if session_id is not None:
        text += f',"session_id":{_string(session_id)}'
    if tenant != DEFAULT_TENANT:
        text += f',"tenant":{_string(tenant)}'
    if at is not None:
        text += f',"at":{at}'
    return text + (',"stream":true}' if stream else "}")


def parse(run_id: str, agent: str, submitted_us: int, raw: bytes | str | None) -> QueuedRun:
    """The run whose :func:`entry` is ``raw`` (None: it has none)."""
    data = {} if raw is None else json.loads(raw)
    return QueuedRun(
        run_id,
        agent,
        submitted_us,
        data.get("session_id"),
        bool(data.get("stream")),
        data.get("tenant", DEFAULT_TENANT),
    )


def add(pipe: Any, runs: Mapping[str, list[str]], entries: Mapping[str, str], ttl_s: int) -> None:
    """Queue on ``pipe`` (the MULTI that pushes the runs' messages) the index writes of
    ``runs`` (agent -> run ids in submit order) with the :func:`entry` of those that have one
    (run id -> text). Each key lives ``ttl_s`` past its last write."""
    if entries:
        pipe.hset(QUEUED_RUNS, mapping=entries)
        pipe.expire(QUEUED_RUNS, ttl_s)
    pipe.sadd(QUEUED_AGENTS, *runs)
    pipe.expire(QUEUED_AGENTS, ttl_s)
    for agent, ids in runs.items():
        key = queued_key(agent)
        pipe.lpush(key, *ids)
        pipe.expire(key, ttl_s)


def add_one(pipe: Any, run_id: str, kwargs: Mapping[str, Any], ttl_s: int) -> None:
    """:func:`add` for one run from its first message's keyword arguments."""
    agent, session_id = str(kwargs.get("agent")), kwargs.get("session_id")
    tenant = kwargs.get("tenant", DEFAULT_TENANT)
    text = entry(
        agent,
        session_id if isinstance(session_id, str) else None,
        bool(kwargs.get("stream")),
        None if time_of(run_id) is not None else now_us(),
        tenant if isinstance(tenant, str) else str(tenant),
    )
    add(pipe, {agent: [run_id]}, {} if text is None else {run_id: text}, ttl_s)


def forget(pipe: Any, agent: str, run_ids: Iterable[str]) -> None:
    """Queue on ``pipe`` the removal of ``run_ids`` (runs of ``agent``) from the index. Each
    is searched from the oldest end (runs leave roughly in submit order): give the oldest
    first."""
    ids = list(run_ids)
    if ids:
        key = queued_key(agent)
        for run_id in ids:
            pipe.lrem(key, -1, run_id)
        pipe.hdel(QUEUED_RUNS, *ids)


def find(client: Any, run_id: str) -> QueuedRun | None:
    """The queued run ``run_id``, or None (not queued, or not indexed)."""
    raw = client.hget(QUEUED_RUNS, run_id)
    names = agents(client) if raw is None else [json.loads(raw)["agent"]]
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.lpos(queued_key(name), run_id)
        places = pipe.execute()
    for name, place in zip(names, places, strict=True):
        if place is not None:
            return parse(run_id, name, _time(run_id, raw), raw)
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
    (by time, then id), read from the list's newest end ``chunk`` at a time (then more).

    The list is in push order, which is time order but for runs pushed up to :data:`SKEW_US`
    after their id was made (another producer's batch): an entry is given once no entry
    further down can be newer, so each page follows the last without gap or repeat."""
    key, offset = queued_key(agent), 0
    pending: list[tuple[int, str]] = []  # read, not given yet: oldest first
    floor: int | None = None  # the oldest time read so far
    while True:
        ids = [_text(member) for member in client.lrange(key, offset, offset + chunk - 1)]
        offset += len(ids)
        marks = _marks(client, ids)
        if marks:
            oldest = min(at for at, _ in marks)
            floor = oldest if floor is None else min(floor, oldest)
            pending += marks if below is None else [mark for mark in marks if mark < below]
            pending.sort()  # two runs (a chunk reads newest first): a linear merge
        done = len(ids) < chunk
        while pending and (done or floor is None or pending[-1][0] > floor + SKEW_US):
            yield pending.pop()
        if done:
            return
        chunk = min(chunk * 2, 10_000)


def prune(client: Any, agent: str, ttl_s: int, chunk: int = 200) -> int:
    """Drop ``agent``'s entries submitted more than ``ttl_s`` ago, read from the list's oldest
    end while it has some; how many."""
    key, cutoff, dropped = queued_key(agent), now_us() - ttl_s * 1_000_000, 0
    while True:
        ids = [_text(member) for member in client.lrange(key, -chunk, -1)]
        stale = [run_id for at, run_id in _marks(client, ids) if at < cutoff]
        if stale:
            with client.pipeline(transaction=True) as pipe:
                forget(pipe, agent, reversed(stale))
                pipe.execute()
            dropped += len(stale)
        if len(stale) < chunk:  # the rest is newer (or there is no rest)
            return dropped


def _marks(client: Any, ids: list[str]) -> list[tuple[int, str]]:
    """(submit time in us, run id) of ``ids``: from the id itself, else from its entry (0,
    i.e. stale, when that is gone)."""
    times = [time_of(run_id) for run_id in ids]
    unknown = [run_id for run_id, at in zip(ids, times, strict=True) if at is None]
    raws = dict(zip(unknown, client.hmget(QUEUED_RUNS, unknown), strict=True)) if unknown else {}
    return [
        (_time(run_id, raws.get(run_id)) if at is None else at, run_id)
        for run_id, at in zip(ids, times, strict=True)
    ]


def _time(run_id: str, raw: bytes | str | None) -> int:
    """A run's submit time (us): its id's, else its entry's ``at`` (0 when neither has it)."""
    at = time_of(run_id)
    if at is not None:
        return at
    return int(json.loads(raw).get("at", 0)) if raw is not None else 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
