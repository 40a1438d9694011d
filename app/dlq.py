"""Dead letters: runs whose step exhausted its retries or hit a poison error, kept with why.

One entry per run in a Redis hash (run id -> JSON) with a sorted-set index by time, holding
everything needed to replay the step: the task's keyword arguments, the reason, the
traceback of a poison error, the retries spent. Nothing leaves it except by an operator's
command (``agentq dlq replay|purge``); there is no size cap that would drop entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

from app.constants import DEAD_LETTER_INDEX, DEAD_LETTERS

RETRIES_EXHAUSTED: Final = "retries_exhausted"  # no model server / store answered in time
POISON: Final = "poison"  # the step raised an error no retry will fix (a bug, a bad message)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered run."""

    run_id: str
    agent: str
    step: int
    kind: str  # RETRIES_EXHAUSTED | POISON
    reason: str
    retries: int
    kwargs: dict[str, Any]  # the step message's arguments, to replay it
    task_id: str  # the step message's task id (step 0's is the run id)
    failed_at: float  # Unix time
    traceback: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        return cls(**json.loads(raw))


def push(client: Any, letter: DeadLetter) -> None:
    """Record ``letter`` (replacing an older entry of the same run)."""
    pipe = client.pipeline(transaction=True)
    pipe.hset(DEAD_LETTERS, letter.run_id, letter.to_json())
    pipe.zadd(DEAD_LETTER_INDEX, {letter.run_id: letter.failed_at})
    pipe.execute()


def get(client: Any, run_id: str) -> DeadLetter | None:
    """The dead letter of ``run_id``, or None."""
    raw = client.hget(DEAD_LETTERS, run_id)
    return None if raw is None else DeadLetter.from_json(raw)


def list_letters(client: Any, limit: int = 100, agent: str | None = None) -> list[DeadLetter]:
    """The newest ``limit`` dead letters (of one agent type when ``agent`` is given)."""
    found: list[DeadLetter] = []
    start, page = 0, max(limit, 100)
    while len(found) < limit:
        ids = client.zrevrange(DEAD_LETTER_INDEX, start, start + page - 1)
        if not ids:
            break
        start += page
        for raw in client.hmget(DEAD_LETTERS, ids):
            if raw is not None:
                letter = DeadLetter.from_json(raw)
                if agent is None or letter.agent == agent:
                    found.append(letter)
    return found[:limit]


def count(client: Any) -> int:
    """How many runs are dead-lettered."""
    return int(client.hlen(DEAD_LETTERS))


def remove(client: Any, run_ids: Iterable[str]) -> int:
    """Delete the entries of ``run_ids``; how many existed."""
    ids = list(run_ids)
    if not ids:
        return 0
    pipe = client.pipeline(transaction=True)
    pipe.hdel(DEAD_LETTERS, *ids)
    pipe.zrem(DEAD_LETTER_INDEX, *ids)
    removed, _ = pipe.execute()
    return int(removed)


def purge_all(client: Any) -> int:
    """Delete every entry; how many there were."""
    pipe = client.pipeline(transaction=True)
    pipe.hlen(DEAD_LETTERS)
    pipe.delete(DEAD_LETTERS, DEAD_LETTER_INDEX)
    total, _ = pipe.execute()
    return int(total)
