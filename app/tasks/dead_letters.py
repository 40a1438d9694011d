"""Dead-lettering a run from the worker, and replaying it for an operator (``agentq dlq``)."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from celery import Celery, states

from app import dlq, metrics
from app.agents import AgentRegistry
from app.constants import TASK_RUN_AGENT
from app.errors import DeadLetteredError, NotDeadLetteredError, StoreError
from app.memory.sessions import NewRun, SessionStore

log = logging.getLogger(__name__)

DEAD_LETTERED: Final = "dead_lettered"
"""error_type of a run failed by the dead-letter queue (replayable)."""


def dead_letter(
    redis: Any,
    store: SessionStore,
    letter: dlq.DeadLetter,
    run_input: Any = None,
    session_id: str | None = None,
) -> DeadLetteredError:
    """Record ``letter``, then fail its run in the store; the error to end the run with.

    The entry is written first: if the store is down too, the run is still findable and
    replayable, and the store learns of the failure on replay.
    """
    dlq.push(redis, letter)
    reason = f"dead-lettered ({letter.kind}): {letter.reason}"
    first = NewRun(letter.run_id, letter.agent, run_input, session_id) if letter.step == 0 else None
    try:
        store.fail_run(letter.run_id, reason, new_run=first, error_type=DEAD_LETTERED)
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
) -> dlq.DeadLetter:
    """Send a dead-lettered run's step back to its queue, then drop the entry.

    The run is set running again first; a crash between publishing and dropping leaves the
    entry in place (replaying it twice is harmless: a step commits once).
    """
    letter = dlq.get(redis, run_id)
    if letter is None:
        raise NotDeadLetteredError(f"run {run_id!r} is not in the dead-letter queue")
    spec = registry.get(letter.agent)
    if spec is None:
        raise NotDeadLetteredError(
            f"run {run_id!r} belongs to agent type {letter.agent!r}, which is not registered"
        )
    store.reopen_run(run_id, (DEAD_LETTERED,))
    # The run's result goes back from FAILURE to STARTED until the replay finishes it.
    celery.backend.store_result(run_id, {"replayed_at": time.time()}, states.STARTED)
    celery.tasks[TASK_RUN_AGENT].apply_async(
        kwargs=letter.kwargs,
        task_id=letter.task_id,
        queue=spec.queue_name,
        ignore_result=True,  # the worker stores the run's result itself
    )
    dlq.remove(redis, [run_id])
    log.warning("run %s: dead letter replayed from step %d", run_id, letter.step)
    return letter
