"""Dead letters: runs whose step exhausted its retries or hit a poison error, kept with why.

One entry per run in a Redis hash (run id -> JSON) with a sorted-set index by time, holding
everything needed to replay the step: the task's keyword arguments, the reason, the
traceback of a poison error, the retries spent. Nothing leaves it except by an operator's
command (``agentq dlq replay|purge``); there is no size cap that would drop entries.

The worker dead-letters a run (:func:`dead_letter`); an operator lists, replays or purges them
(``agentq dlq``, :func:`replay`).

The same hash keeps the quarantine: messages a worker took off a queue that are no agentq
message (not JSON, not a Celery envelope, an unknown task, too large: see
``app/celery_ext/intake.py``), each under an id of its own (``quarantine-<n>``), kind
``quarantined``, with its raw bytes (the first ``worker.quarantine_keep_bytes``, escaped as
``\\xHH`` outside printable ASCII), their full length, the queue and the worker. They have no
run to replay; they are shown and purged like the rest.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery, states

from app.agents.registry import AgentRegistry
from app.constants import DEAD_LETTER_INDEX, DEAD_LETTERS, DEFAULT_TENANT, TASK_RUN_AGENT
from app.errors import (
    DeadLetteredError,
    NotDeadLetteredError,
    QuarantinedMessageError,
    StoreError,
)
from app.memory.sessions import ErrorType, NewRun, SessionStore
from app.ops import metrics

log = logging.getLogger(__name__)


class DeadLetterKind(enum.StrEnum):
    """Why a run was dead-lettered (stored with it, and the ``kind`` label of its metric)."""

    RETRIES_EXHAUSTED = "retries_exhausted"  # no model server / store answered in time
    POISON = "poison"  # the step raised an error no retry will fix (a bug, a bad message)
    QUARANTINED = "quarantined"  # a message taken off a queue that is no agentq message
    NO_SUCH_RUN = "no_such_run"  # a later step of a run that was never started


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered run, or one quarantined message (``run_id`` is then its entry id)."""

    run_id: str
    agent: str
    step: int
    kind: DeadLetterKind
    reason: str
    retries: int
    kwargs: dict[str, Any]  # the step message's arguments, to replay it
    task_id: str  # the step message's task id (step 0's is the run id)
    failed_at: float  # Unix time
    traceback: str | None = None
    raw: str | None = None  # quarantined: the message's first bytes, escaped (intake.escaped)
    raw_length: int | None = None  # quarantined: the message's length in bytes
    queue: str | None = None  # quarantined: the queue it was taken from
    worker: str | None = None  # quarantined: the worker that took it

    @property
    def quarantined(self) -> bool:
        """A quarantined message, not a run: nothing to replay."""
        return self.kind == DeadLetterKind.QUARANTINED

    @property
    def replayable(self) -> bool:
        """Whether :func:`replay` can run it again (a quarantined message or a step of a run
        never started has no run to replay)."""
        return self.kind not in (DeadLetterKind.QUARANTINED, DeadLetterKind.NO_SUCH_RUN)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        fields = json.loads(raw)
        return cls(**{**fields, "kind": DeadLetterKind(fields["kind"])})


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


def dead_letter(
    redis: Any,
    store: SessionStore,
    letter: DeadLetter,
    run_input: Any = None,
    session_id: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> DeadLetteredError:
    """Record ``letter``, then fail its run in the store; the error to end the run with.

    The entry is written first: if the store is down too, the run is still findable and
    replayable, and the store learns of the failure on replay.
    """
    push(redis, letter)
    reason = f"dead-lettered ({letter.kind}): {letter.reason}"
    first = (
        NewRun(letter.run_id, letter.agent, run_input, session_id, tenant=tenant)
        if letter.step == 0
        else None
    )
    try:
        store.fail_run(
            letter.run_id,
            reason,
            new_run=first,
            error_type=ErrorType.DEAD_LETTERED,
            traceback=letter.traceback,
        )
    except StoreError as exc:
        log.error("run %s: dead-lettered, but the store could not be told: %s", letter.run_id, exc)
    metrics.dead_lettered(letter.agent, letter.kind)
    log.error(
        "run %s (agent %s) dead-lettered at step %d (%s): %s",
        letter.run_id,
        letter.agent,
        letter.step,
        letter.kind,
        letter.reason,
    )
    return DeadLetteredError(reason)


def replay(
    celery: Celery, registry: AgentRegistry, store: SessionStore, redis: Any, run_id: str
) -> DeadLetter:
    """Send a dead-lettered run's step back to its queue, then drop the entry.

    The run is set running again first; a crash between publishing and dropping leaves the
    entry in place (replaying it twice is harmless: a step commits once).
    """
    letter = get(redis, run_id)
    if letter is None:
        raise NotDeadLetteredError(f"run {run_id!r} is not in the dead-letter queue")
    if letter.quarantined:
        raise QuarantinedMessageError(
            f"{run_id} is a quarantined message ({letter.reason}), not a run: there is nothing "
            f"to replay; see it with `agentq dlq show {run_id}`, drop it with `agentq dlq purge "
            f"{run_id}`"
        )
    if letter.kind == DeadLetterKind.NO_SUCH_RUN:
        raise QuarantinedMessageError(
            f"{run_id} is step {letter.step} of a run that was never started, not a run: there "
            f"is nothing to replay; drop it with `agentq dlq purge {run_id}`"
        )
    spec = registry.get(letter.agent)
    if spec is None:
        raise NotDeadLetteredError(
            f"run {run_id!r} belongs to agent type {letter.agent!r}, which is not registered"
        )
    store.reopen_run(run_id, (ErrorType.DEAD_LETTERED,))
    # The run's result goes back from FAILURE to STARTED until the replay finishes it.
    celery.backend.store_result(run_id, {"replayed_at": time.time()}, states.STARTED)
    celery.tasks[TASK_RUN_AGENT].apply_async(
        kwargs=letter.kwargs,
        task_id=letter.task_id,
        queue=spec.queue_name,
        ignore_result=True,  # the worker stores the run's result itself
    )
    remove(redis, [run_id])
    log.warning("run %s: dead letter replayed from step %d", run_id, letter.step)
    return letter
