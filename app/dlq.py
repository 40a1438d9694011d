"""Dead letters: runs that ended because a step exhausted its retries, kept with the reason.

A Redis list (newest first) of JSON entries holding everything needed to replay the step
later: the task's keyword arguments, the reason, the retries spent and when. Nothing is
removed from it except by an operator (``agentq dlq``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from app.constants import DEAD_LETTERS


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered run."""

    run_id: str
    agent: str
    step: int
    reason: str
    retries: int
    kwargs: dict[str, Any]  # the step message's arguments, to replay it
    failed_at: float  # Unix time

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        return cls(**json.loads(raw))


def push(client: Any, letter: DeadLetter, max_len: int) -> None:
    """Record ``letter`` (the list keeps the newest ``max_len``)."""
    pipe = client.pipeline(transaction=True)
    pipe.lpush(DEAD_LETTERS, letter.to_json())
    pipe.ltrim(DEAD_LETTERS, 0, max_len - 1)
    pipe.execute()


def list_letters(client: Any, limit: int = 100) -> list[DeadLetter]:
    """The newest ``limit`` dead letters."""
    return [DeadLetter.from_json(raw) for raw in client.lrange(DEAD_LETTERS, 0, limit - 1)]


def count(client: Any) -> int:
    """How many runs are dead-lettered."""
    return int(client.llen(DEAD_LETTERS))
