"""How a finished step hands its run on in Redis: the next step's message, the run's result,
the step's own acknowledgement and, after a run's first step, its removal from the queued-runs
index, in as few round trips as the broker and backend allow."""

from __future__ import annotations

import functools
import logging
from contextlib import nullcontext

from celery import Task, states
from redis.exceptions import RedisError

from app.celery_ext import queued
from app.celery_ext.context import context_of
from app.celery_ext.envelope import (
    message_headers,
    process_origin,
    reply_to_of,
    run_message,
    step_task_id,
)
from app.celery_ext.results import queue_result, result_value, store_result, with_retries
from app.celery_ext.transport import ack_on, acked
from app.celery_ext.worker import delivery_tag
from app.constants import published_key
from app.tasks.runner import StepMessage, StepResult
from app.tasks.runtime import WorkerRuntime

log = logging.getLogger(__name__)


def store_answer(task: Task, runtime: WorkerRuntime, msg: StepMessage, result: StepResult) -> None:
    """The run's answer, and the run's lease given back in the same round trip when the
    result backend is the Redis the leases are in (the default)."""
    settings, backend, lease = runtime.settings, task.backend, result.lease
    if settings.backend != settings.redis_url:
        store_result(backend, msg.run_id, states.SUCCESS, result.answer)
        if msg.step == 0:
            forget_queued(task, runtime, msg)
        return
    key, value = result_value(backend, msg.run_id, states.SUCCESS, result.answer)
    tag = own_ack(task, runtime)
    # A one-step run leaves the queued-runs index in this round trip when the broker is here.
    forget = msg.step == 0 and settings.broker == settings.redis_url

    def write() -> None:
        with (
            runtime.redis.pipeline(transaction=False) as pipe,  # order kept; no MULTI needed
            runtime.runner.leases.releasing(msg.run_id, lease, pipe) if lease else nullcontext(),
        ):
            queue_result(pipe, backend, key, value)
            if tag is not None:
                ack_on(pipe, tag)
            if forget:
                queued.forget(pipe, msg.agent, [msg.run_id])
            pipe.execute()

    with_retries(backend, write)
    if msg.step == 0 and not forget:
        forget_queued(task, runtime, msg)
    if tag is not None:
        acked(tag)


def own_ack(task: Task, runtime: WorkerRuntime) -> str | None:
    """The delivery tag of this step's message when the step acknowledges it itself, in the
    pipeline that hands it on (the broker is the runtime's Redis); else None."""
    return delivery_tag(task) if runtime.pipeline_acks else None


def forget_queued(task: Task, runtime: WorkerRuntime, msg: StepMessage) -> None:
    """Drop the run from the queued-runs index (its first step is stored, or it ended), in a
    round trip of its own; best effort: a reader drops an entry whose run is stored."""
    settings = runtime.settings
    broker = runtime.redis if settings.broker == settings.redis_url else context_of(task.app).broker
    try:
        with broker.pipeline(transaction=False) as pipe:
            queued.forget(pipe, msg.agent, [msg.run_id])
            pipe.execute()
    except RedisError as exc:
        log.warning("run %s: not dropped from the queued-runs index: %s", msg.run_id, exc)


def publish_step(
    task: Task,
    runtime: WorkerRuntime,
    msg: StepMessage,
    step: int,
    *,
    check: bool,
    started: bool,
) -> None:
    """Hand the run on: publish its step ``step``, mark it published, and (``started``) store
    the run's STARTED result. On the broker's Redis, all of it and this step's own
    acknowledgement go in one MULTI: the message is acknowledged if and only if the next one
    is published."""
    marker = published_key(msg.run_id, step)
    if check and runtime.redis.exists(marker):
        return
    backend, marker_ttl = task.backend, 2 * runtime.settings.worker.visibility_timeout_s
    kwargs = msg.next_kwargs(step)
    task_id, queue = step_task_id(msg.run_id, step), runtime.registry.spec(msg.agent).queue_name
    tag = own_ack(task, runtime)
    result = None  # the run's STARTED result, when it rides in the MULTI below
    if started:
        progress = (backend, msg.run_id, states.STARTED, {"next_step": step})
        if tag is not None and runtime.settings.backend == runtime.settings.redis_url:
            result = result_value(*progress)
        else:
            store_result(*progress)
    # Flower links a run's steps: the root is the run's first task, the parent this one.
    root_id, parent_id = msg.run_id, task.request.id
    if tag is None:
        task.apply_async(
            kwargs=kwargs,
            task_id=task_id,
            queue=queue,
            ignore_result=True,  # the run's result lives under the run id only
            headers=message_headers(),
            root_id=root_id,
            parent_id=parent_id,
        )
        # Set after publishing: a crash in between costs a duplicate message, never a lost one.
        runtime.redis.set(marker, 1, ex=marker_ttl)
        if started:
            forget_queued(task, runtime, msg)
        return
    message = run_message(
        task_id,
        kwargs,
        queue,
        message_headers(),
        reply_to=reply_to_of(task.app),
        origin=_origin(),
        root_id=root_id,
        parent_id=parent_id,
    )

    def write() -> None:
        with runtime.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(queue, message)
            pipe.set(marker, 1, ex=marker_ttl)
            if result is not None:
                queue_result(pipe, backend, *result)
            if started:  # the broker is this Redis
                queued.forget(pipe, msg.agent, [msg.run_id])
            ack_on(pipe, tag)
            pipe.execute()

    with_retries(backend, write)  # ridden out across a Redis restart, as the result writes are
    acked(tag)


_origin = functools.cache(process_origin)  # a worker's node name does not change
