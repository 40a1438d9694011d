"""Carrying out what a parked run's change committed (:class:`~app.memory.waits.Effects`): in
a worker after a step, and in whatever process sent a signal, a cancellation or found a timer
due. The messages go to Redis in one MULTI (each resumed run's step with its published marker,
each sub-agent run's first message with its queued-runs entry); the ended runs' results and
the cancellations follow.

A process that dies between the commit and this leaves nothing lost: recovery publishes a
resumed run's step (it is ``running`` with no message) and starts a sub-agent run (it is an
accepted run that never started) once the grace period has passed.
"""

from __future__ import annotations

import logging

from celery import Celery

from app.celery_ext import queued
from app.celery_ext.context import context_of
from app.celery_ext.envelope import message_headers, reply_to_of, run_message, step_task_id
from app.constants import CANCEL_CHANNEL, cancel_key, published_key
from app.memory.waits import Effects
from app.tasks.relay import TokenRelay

log = logging.getLogger(__name__)


def carry_out(celery: Celery, effects: Effects) -> None:
    """Publish, store and announce what ``effects`` says, on ``celery``'s Redis."""
    if not effects:
        return
    context = context_of(celery)
    settings, registry = context.settings, context.registry
    broker, redis = context.broker, context.redis
    if effects.resumed or effects.started:
        reply_to = reply_to_of(celery)
        marker_ttl = 2 * settings.worker.visibility_timeout_s
        markers_here = settings.broker == settings.redis_url
        with broker.pipeline(transaction=True) as pipe:
            for resumed in effects.resumed:
                queue = registry.spec(resumed.agent).queue_name
                task_id = step_task_id(resumed.run_id, resumed.step)
                pipe.lpush(queue, run_message(
                    task_id, resumed.message, queue, message_headers(), reply_to=reply_to,
                    root_id=resumed.run_id,
                ))  # fmt: skip
                if markers_here:
                    pipe.set(published_key(resumed.run_id, resumed.step), 1, ex=marker_ttl)
            for child in effects.started:
                queue = registry.spec(child.agent).queue_name
                pipe.lpush(queue, run_message(
                    child.run_id, child.kwargs, queue, message_headers(new_run=True),
                    reply_to=reply_to,
                ))  # fmt: skip
                queued.add_one(pipe, child.run_id, child.kwargs, settings.limits.queued_ttl_s)
            pipe.execute()
        if not markers_here:
            for resumed in effects.resumed:
                redis.set(published_key(resumed.run_id, resumed.step), 1, ex=marker_ttl)
    if effects.cancel:
        with redis.pipeline(transaction=False) as pipe:
            for run_id in effects.cancel:
                # The key for a step that starts later, the message for a model call under way.
                pipe.set(cancel_key(run_id), 1, ex=settings.worker.visibility_timeout_s)
                pipe.publish(CANCEL_CHANNEL, run_id)
            pipe.execute()
    if effects.ended:
        from app.tasks.run_agent import run_error

        relay = TokenRelay(redis, settings.stream)
        for ended in effects.ended:
            celery.backend.mark_as_failure(ended.run_id, run_error(ended.reason, ended.error_type))
            relay.end(ended.tenant, ended.run_id, ended.status, error=ended.reason)
