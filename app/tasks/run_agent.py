"""The ``agentq.run_agent`` task: one message per step of a run.

Producers call it with ``agent``, ``input`` and optionally ``session_id``; the first
message's task id is the run id and its ``AsyncResult`` resolves to the run's answer.
Later steps are messages of the same task carrying ``run_id`` and ``step``.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from celery import Celery, Task, states
from celery.exceptions import Ignore

from app import dlq
from app.constants import TASK_RUN_AGENT, published_key
from app.errors import InferenceUnavailableError, RunFailedError
from app.inference.pool import backoff_delay
from app.memory.sessions import NewRun
from app.streaming import RunResult
from app.tasks.runner import Outcome, StepMessage, StepResult
from app.tasks.runtime import WorkerRuntime, runtime_for

log = logging.getLogger(__name__)


def step_task_id(run_id: str, step: int) -> str:
    """Task id of a run's later step messages (step 0's is the run id)."""
    return f"{run_id}:{step}"


def retry_delay(retries: int, cap_s: float) -> float:
    """Exponential backoff with full jitter: up to 1, 2, 4 ... seconds, capped."""
    return backoff_delay(retries, 1.0, cap_s, random.random())


class RunAgentTask(Task):  # type: ignore[misc]
    """The task class: its results are :class:`RunResult` (``.stream()`` follows the tokens)."""

    def AsyncResult(self, task_id: str, **kwargs: Any) -> RunResult:
        return RunResult(task_id, backend=self.backend, task_name=self.name, app=self.app, **kwargs)


def register_run_agent(app: Celery) -> Task:
    """Define ``agentq.run_agent`` on ``app``."""

    @app.task(name=TASK_RUN_AGENT, bind=True, max_retries=None, shared=False, base=RunAgentTask)
    def run_agent(
        self: Task,
        agent: str,
        input: Any = None,
        session_id: str | None = None,
        run_id: str | None = None,
        step: int = 0,
        stream: bool = False,
    ) -> Any:
        runtime = runtime_for(self.app, self.request.hostname or "")
        msg = StepMessage(run_id or self.request.id, agent, step, input, session_id, stream)
        try:
            result = runtime.runner.run_step(msg)
        except InferenceUnavailableError as exc:
            worker = runtime.settings.worker
            if self.request.retries >= worker.inference_retries:
                result = _dead_letter(self, runtime, msg, exc)
            else:
                # All replicas down: hand the step back to the broker for later, with backoff,
                # rather than hold a thread here.
                delay = retry_delay(self.request.retries, worker.retry_backoff_max_s)
                raise self.retry(exc=exc, countdown=delay) from exc
        return _finish(self, runtime, msg, result)

    return run_agent


def _dead_letter(
    task: Task, runtime: WorkerRuntime, msg: StepMessage, exc: Exception
) -> StepResult:
    retries = task.request.retries
    reason = f"no model server answered after {retries} retries: {exc}"
    letter = dlq.DeadLetter(
        run_id=msg.run_id,
        agent=msg.agent,
        step=msg.step,
        reason=reason,
        retries=retries,
        kwargs=dict(task.request.kwargs or {}),
        failed_at=time.time(),
    )
    dlq.push(runtime.redis, letter, runtime.settings.worker.dead_letter_max)
    first = NewRun(msg.run_id, msg.agent, msg.input, msg.session_id) if msg.step == 0 else None
    runtime.store.fail_run(msg.run_id, f"dead-lettered: {reason}", new_run=first)
    log.error(
        "run %s (agent %s) dead-lettered at step %d: %s", msg.run_id, msg.agent, msg.step, reason
    )
    return StepResult(Outcome.FAILED, reason=f"dead-lettered: {reason}")


def _finish(task: Task, runtime: WorkerRuntime, msg: StepMessage, result: StepResult) -> Any:
    is_first = task.request.id == msg.run_id
    match result.outcome:
        case Outcome.NEXT | Outcome.REPUBLISH:
            assert result.next_step is not None
            if is_first and result.outcome is Outcome.NEXT:
                task.update_state(state=states.STARTED, meta={"next_step": result.next_step})
            _publish_step(
                task, runtime, msg, result.next_step, check=result.outcome is Outcome.REPUBLISH
            )
        case Outcome.DONE:
            if msg.stream:
                runtime.runner.relay.end(msg.run_id, "succeeded", answer=result.answer)
            if is_first:
                return result.answer
            task.backend.store_result(msg.run_id, result.answer, states.SUCCESS)
        case Outcome.FAILED:
            if msg.stream:
                runtime.runner.relay.end(msg.run_id, "failed", error=result.reason)
            task.backend.mark_as_failure(msg.run_id, RunFailedError(result.reason or "run failed"))
        case Outcome.BUSY:
            # Another worker holds the run: come back shortly rather than wait in a thread.
            task.apply_async(
                kwargs=task.request.kwargs,
                task_id=task.request.id,
                countdown=runtime.settings.worker.lease_retry_s,
                queue=_queue(runtime, msg.agent),
            )
    raise Ignore()


def _queue(runtime: WorkerRuntime, agent: str) -> str:
    spec = runtime.registry.get(agent)
    assert spec is not None
    return spec.queue_name


def _publish_step(
    task: Task, runtime: WorkerRuntime, msg: StepMessage, step: int, *, check: bool
) -> None:
    marker = published_key(msg.run_id, step)
    if check and runtime.redis.exists(marker):
        return
    task.apply_async(
        kwargs={
            "agent": msg.agent,
            "session_id": msg.session_id,
            "run_id": msg.run_id,
            "step": step,
            **({"stream": True} if msg.stream else {}),
        },
        task_id=step_task_id(msg.run_id, step),
        queue=_queue(runtime, msg.agent),
    )
    # Set after publishing: a crash in between costs a duplicate message, never a lost one.
    runtime.redis.set(marker, 1, ex=2 * runtime.settings.worker.visibility_timeout_s)
