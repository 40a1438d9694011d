"""The ``agentq.run_agent`` task: one message per step of a run.

Producers call it with ``agent``, ``input`` and optionally ``session_id``; the first
message's task id is the run id and its ``AsyncResult`` resolves to the run's answer.
Later steps are messages of the same task carrying ``run_id`` and ``step``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
import traceback
from typing import Any, NoReturn

import redis
from celery import Celery, Task, states
from celery.exceptions import Ignore, Reject, Retry
from kombu.exceptions import OperationalError

from app.celery_ext.envelope import ENQUEUED_AT, NEW_RUN, message_headers, new_id, shadow_of
from app.celery_ext.results import expecting_result, store_result
from app.constants import DEFAULT_TENANT, TASK_RUN_AGENT
from app.errors import (
    BudgetExceededError,
    ChildRunFailedError,
    DeadLetteredError,
    ForeignSessionError,
    InferenceUnavailableError,
    NoSuchRunError,
    OutputRejectedError,
    RunCancelledError,
    RunFailedError,
    SessionBusyError,
    StoreError,
    WaitTimedOutError,
)
from app.inference.pool import backoff_delay
from app.memory.records import ErrorType, RunStatus
from app.ops import logs, metrics, tracing
from app.ops.masking import task_kwargsrepr
from app.producer.results import RunResult
from app.tasks import dead_letters as dlq
from app.tasks.dead_letters import DeadLetterKind, dead_letter
from app.tasks.effects import carry_out
from app.tasks.handoff import forget_queued, publish_step, store_answer
from app.tasks.runner import Outcome, StepMessage, StepResult
from app.tasks.runtime import WorkerRuntime, runtime_for
from app.tasks.steps import summary

log = logging.getLogger(__name__)

# Errors that a later try may not hit: no model server, the store or Redis unreachable.
TRANSIENT = (
    InferenceUnavailableError,
    StoreError,
    redis.ConnectionError,
    redis.TimeoutError,
)

# Redis unreachable while the step is handed on (next step, result, lease retry published).
HAND_ON_ERRORS = (OperationalError, redis.ConnectionError, redis.TimeoutError, OSError)

_RUN_ERRORS: dict[ErrorType | None, type[RunFailedError]] = {
    ErrorType.BUDGET_EXCEEDED: BudgetExceededError,
    ErrorType.OUTPUT_REJECTED: OutputRejectedError,
    ErrorType.DEAD_LETTERED: DeadLetteredError,
    ErrorType.SESSION_BUSY: SessionBusyError,
    ErrorType.FOREIGN_SESSION: ForeignSessionError,
    ErrorType.CANCELLED: RunCancelledError,
    ErrorType.CHILD_FAILED: ChildRunFailedError,
    ErrorType.WAIT_TIMED_OUT: WaitTimedOutError,
}


def run_error(reason: str | None, error_type: ErrorType | None) -> RunFailedError:
    """The typed error a failed run raises from ``AsyncResult.get()``."""
    return _RUN_ERRORS.get(error_type, RunFailedError)(reason or "run failed")


def retry_delay(retries: int, cap_s: float) -> float:
    """Exponential backoff with full jitter: up to 1, 2, 4 ... seconds, capped."""
    return backoff_delay(retries, 1.0, cap_s, random.random())


class RunAgentTask(Task):  # type: ignore[misc]
    """The task class: its results are :class:`RunResult` (``.stream()`` follows the tokens)."""

    def AsyncResult(self, task_id: str, **kwargs: Any) -> RunResult:
        return RunResult(task_id, backend=self.backend, task_name=self.name, app=self.app, **kwargs)

    def shadow_name(self, args: Any, kwargs: Any, options: Any) -> str | None:
        """The name monitors (Flower, Celery's log lines) show for a step: its agent type."""
        return shadow_of(kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        # Every publish (submit, next step, retry): Flower and Celery's log lines show
        # this text instead of the arguments, with secrets masked.
        # As a header, not the kwargsrepr option: Celery copies options into the message
        # properties too, so the text (the run's input, cut) would travel twice.
        options["headers"] = {
            "kwargsrepr": task_kwargsrepr(kwargs),
            **(options.get("headers") or {}),
        }
        if options.get("task_id") is None and not args and _starts_a_run(kwargs):
            # delay() / apply_async() of a new run: every path of agentq's own names the task
            # id. A run id that holds its submit time, the new-run mark (indexed as queued,
            # its first step committed in one write) and, with durability.accepted = "sql",
            # the run recorded as accepted before it is pushed, as submit() does.
            return self._start_run(kwargs, options)
        # A later step's root is its run's first task (Flower links a run's steps by it).
        options.setdefault("root_id", (kwargs or {}).get("run_id"))
        # Sent with ignore_result, the worker still stores the run's result under the run id
        # (see _finish), so the handle must wait for it rather than return None.
        return expecting_result(super().apply_async(args, kwargs, **options))

    def _start_run(self, kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        from app.producer.submit import forget_accepted_runs, record_accepted_runs

        run_id = options["task_id"] = new_id()
        options["headers"] = {**message_headers(new_run=True), **options["headers"]}
        recorded = record_accepted_runs(self.app, [(run_id, str(kwargs.get("agent")), kwargs)])
        try:
            return self.apply_async(None, kwargs, **options)
        except BaseException:
            forget_accepted_runs(self.app, recorded)
            raise


def _starts_a_run(kwargs: Any) -> bool:
    """Whether keyword arguments ``kwargs`` are a new run's (not a later step's)."""
    return isinstance(kwargs, dict) and not kwargs.get("run_id") and not kwargs.get("step")


def register_run_agent(app: Celery) -> Task:
    """Define ``agentq.run_agent`` on ``app``."""

    @app.task(
        name=TASK_RUN_AGENT,
        bind=True,
        max_retries=None,
        shared=False,
        base=RunAgentTask,
        throws=(RunFailedError,),  # a run ending in failure is not a worker error
    )
    def run_agent(
        self: Task,
        agent: str = "",
        input: Any = None,
        session_id: str | None = None,
        run_id: str | None = None,
        step: int = 0,
        stream: bool = False,
        budget: dict[str, Any] | None = None,
        tenant: Any = DEFAULT_TENANT,
        parent: dict[str, Any] | None = None,
        **unknown: Any,
    ) -> Any:
        runtime = runtime_for(self.app, self.request.hostname or "")
        request = self.request
        first = (
            step == 0
            and not stream
            and getattr(request, NEW_RUN, None) is True
            and not request.retries
            and not (request.delivery_info or {}).get("redelivered")
        )
        msg = StepMessage(
            run_id or request.id, agent, step, input, session_id, stream, budget, first,
            # Not a string: kept as text, and step 0's validation refuses the run.
            tenant if isinstance(tenant, str) else str(tenant),
            parent if isinstance(parent, dict) else None,
        )  # fmt: skip
        enqueued = getattr(request, ENQUEUED_AT, None)
        if isinstance(enqueued, (int, float)) and not request.retries:
            metrics.queue_wait(agent, max(0.0, time.time() - enqueued))
        parent = tracing.extract(self.request)
        with (
            logs.step_context(msg.run_id, agent, step),
            tracing.span(
                "agentq.step", parent, "consumer", agent=agent, run_id=msg.run_id, step=step
            ) as span,
        ):
            metrics.step_started(agent)
            try:
                if unknown:
                    raise TypeError(f"unexpected arguments {sorted(unknown)}")
                result = runtime.runner.run_step(msg, keep_lease=True)
            except NoSuchRunError as exc:
                _no_such_run(self, runtime, msg, exc)
            except TRANSIENT as exc:
                if self.request.retries >= runtime.settings.worker.inference_retries:
                    result = _dead_letter(self, runtime, msg, exc, DeadLetterKind.RETRIES_EXHAUSTED)
                else:
                    _retry_later(self, runtime, msg, exc)
            except Exception as exc:
                # Poison: retrying cannot help (a bug, a malformed message): keep it for operators.
                result = _dead_letter(self, runtime, msg, exc, DeadLetterKind.POISON)
            finally:
                metrics.step_ended(agent)
            span.set(outcome=result.outcome.value)
            try:
                return _finish(self, runtime, msg, result)
            except HAND_ON_ERRORS as exc:
                # Committed, not handed on: unacknowledged, the message comes back and, its
                # step found committed, only hands on (acknowledging it would stall the run).
                raise Reject(f"step not handed on: {exc!r}", requeue=True) from exc
            finally:
                if result.lease is not None:
                    # Kept to go back with the answer; given back here if that did not happen
                    # (with Redis away, it expires on its own).
                    with contextlib.suppress(*HAND_ON_ERRORS):
                        runtime.runner.leases.release(msg.run_id, result.lease)

    return run_agent


def _retry_later(task: Task, runtime: WorkerRuntime, msg: StepMessage, exc: Exception) -> None:
    """Hand the step back to the broker with backoff rather than hold a thread here."""
    metrics.step_retry(msg.agent, type(exc).__name__)
    delay = retry_delay(task.request.retries, runtime.settings.worker.retry_backoff_max_s)
    try:
        raise task.retry(exc=exc, countdown=delay)
    except Retry:
        raise
    except Exception as publish_error:
        # The retry could not be published: leave the message unacknowledged for redelivery.
        raise Reject(f"retry not published: {publish_error}", requeue=True) from exc


def _dead_letter(
    task: Task,
    runtime: WorkerRuntime,
    msg: StepMessage,
    exc: Exception,
    kind: DeadLetterKind,
) -> StepResult:
    retries = task.request.retries
    reason = f"{type(exc).__name__}: {exc}"
    if kind == DeadLetterKind.RETRIES_EXHAUSTED:
        reason = f"still failing after {retries} retries: {reason}"
    letter = dlq.DeadLetter(
        run_id=msg.run_id,
        agent=msg.agent,
        step=msg.step,
        kind=kind,
        reason=reason,
        retries=retries,
        kwargs=dict(task.request.kwargs or {}),
        task_id=task.request.id,
        failed_at=time.time(),
        traceback="".join(traceback.format_exception(exc)),
    )
    error = dead_letter(runtime.redis, runtime.store, letter, msg.input, msg.session_id, msg.tenant)
    return StepResult(Outcome.FAILED, reason=str(error), error_type=ErrorType.DEAD_LETTERED)


def _no_such_run(
    task: Task, runtime: WorkerRuntime, msg: StepMessage, exc: NoSuchRunError
) -> NoReturn:
    """Dead-letter a step whose run does not exist and fail its message's own result (not the
    run's: the store is left alone, as no run of that id is there to fail)."""
    letter = dlq.DeadLetter(
        run_id=msg.run_id,
        agent=msg.agent,
        step=msg.step,
        kind=DeadLetterKind.NO_SUCH_RUN,
        reason=str(exc),
        retries=task.request.retries,
        kwargs=dict(task.request.kwargs or {}),
        task_id=task.request.id,
        failed_at=time.time(),
    )
    dlq.push(runtime.redis, letter)
    metrics.dead_lettered(msg.agent, letter.kind)
    log.error("step %d of run %s dead-lettered: %s", msg.step, msg.run_id, exc)
    # Sent with ignore_result or not, the sender's AsyncResult waits on this task id.
    task.backend.mark_as_failure(task.request.id, exc)
    raise exc


def _finish(task: Task, runtime: WorkerRuntime, msg: StepMessage, result: StepResult) -> Any:
    is_first = task.request.id == msg.run_id
    # Messages sent with ignore_result (submit(), later steps, replays) leave the run's result
    # to us and return a summary, so task events (Flower) show each step finished. A plain
    # delay()/send_task first message stores its answer the Celery way instead.
    own_results = bool(task.request.ignore_result)
    marked = getattr(task.request, NEW_RUN, None) is True
    # Text, not a dict: Celery takes the saferepr of what a task returns (7x as long for a dict).
    said = summary(msg.step, result)
    if result.effects:
        carry_out(task.app, result.effects)  # sub-agent runs started, a parent resumed...
    if msg.stream_to and result.outcome in (Outcome.DONE, Outcome.FAILED):
        ended = {"run_id": msg.run_id, "agent": msg.agent, "status": _status_of(result)}
        runtime.runner.relay.child(msg.tenant, msg.stream_to, msg.step, ended)
    match result.outcome:
        case Outcome.NEXT | Outcome.REPUBLISH:
            assert result.next_step is not None
            started = is_first and result.outcome is Outcome.NEXT
            publish_step(
                task, runtime, msg, result.next_step,
                check=result.outcome is Outcome.REPUBLISH, started=started,
            )  # fmt: skip
        case Outcome.DONE:
            if msg.stream:
                runtime.runner.relay.end(
                    msg.tenant, msg.run_id, RunStatus.SUCCEEDED, answer=result.answer
                )
            if is_first and not own_results:
                if marked:  # delay() of a new run: indexed as queued by the producer
                    forget_queued(task, runtime, msg)
                return result.answer
            store_answer(task, runtime, msg, result)
        case Outcome.FAILED:
            if msg.stream:
                runtime.runner.relay.end(
                    msg.tenant,
                    msg.run_id,
                    _status_of(result),
                    error=result.reason,
                )
            error = run_error(result.reason, result.error_type)
            if own_results or not is_first:
                task.backend.mark_as_failure(msg.run_id, error)
            if is_first and (own_results or marked):  # indexed as queued by the producer
                forget_queued(task, runtime, msg)
            # Raised, so Flower and task events show the run's typed failure.
            raise error
        case Outcome.PARKED if is_first:
            # Started, and waiting: no longer a queued run (its result says it started).
            store_result(task.backend, msg.run_id, states.STARTED, {"next_step": msg.step + 1})
            forget_queued(task, runtime, msg)
        case Outcome.BUSY | Outcome.SESSION_BUSY:
            # Another worker holds the run, or another run its session: come back later
            # rather than wait in a thread.
            settings = runtime.settings
            task.apply_async(
                kwargs=task.request.kwargs,
                task_id=task.request.id,
                countdown=settings.worker.lease_retry_s
                if result.outcome is Outcome.BUSY
                else settings.sessions.busy_retry_s,
                queue=runtime.registry.spec(msg.agent).queue_name,
                ignore_result=own_results or not is_first,
                headers=message_headers(),
                root_id=msg.run_id,
                parent_id=task.request.parent_id,  # Celery's default would be this task
            )
    if own_results:
        return said
    raise Ignore()


def _status_of(result: StepResult) -> RunStatus:
    """How the run a step ended ended."""
    if result.outcome is Outcome.DONE:
        return RunStatus.SUCCEEDED
    return RunStatus.CANCELLED if result.error_type is ErrorType.CANCELLED else RunStatus.FAILED
