"""Admission control: a worker stops taking runs from Redis while the model servers are full.

When every ready replica of an agent's backend has more requests waiting than
``inference.admission_max_depth``, the worker stops consuming that agent's queue: runs wait
in Redis, where KEDA counts them, instead of piling onto the GPU server. It consumes again
once a replica's queue is at or below the resume depth (hysteresis, so it does not flap).
Steps already taken finish as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery import bootsteps

from app.celery_ext.context import context_of
from app.celery_ext.worker import consumed_queues
from app.inference.pool import ReplicaStatus

log = logging.getLogger(__name__)


def should_pause(
    replicas: Sequence[ReplicaStatus],
    max_depth: float | None,
    resume_depth: float | None,
    paused: bool,
) -> bool:
    """Whether to stop taking runs, given the replicas' state and whether we already stopped.

    Only ready replicas whose queue depth is known count; with none, runs are taken (the
    pool's breakers and Celery's retries handle replicas that are down).
    """
    if max_depth is None:
        return False
    depths = [r.queue_depth for r in replicas if r.ready and r.queue_depth is not None]
    if not depths:
        return False
    if paused:
        threshold = max_depth if resume_depth is None else resume_depth
        return all(d > threshold for d in depths)
    return all(d > max_depth for d in depths)


class AdmissionControl(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: every ``metrics_interval_s``, pause or resume each agent's queue."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.paused: set[str] = set()

    def start(self, c: Any) -> None:
        inference = context_of(c.app).settings.inference
        if inference.admission_max_depth is None:
            return
        from app.tasks.runtime import runtime_for

        # The pools must be up (scraping) before the first task, also under `celery worker`.
        runtime_for(c.app, c.hostname or "")
        self.tref = c.timer.call_repeatedly(
            inference.metrics_interval_s, self.check, (c,), priority=10
        )

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def check(self, c: Any) -> None:
        """Pause the queues whose backend is full; resume those whose backend has room."""
        runtime = context_of(c.app).runtime
        if runtime is None:
            return
        inference = runtime.settings.inference
        consuming = consumed_queues(c.app)
        for spec in runtime.registry:
            queue = spec.queue_name
            if queue not in consuming and queue not in self.paused:
                continue  # not one of this worker's queues
            pool = runtime.pools.get(spec.backend)
            if pool is None:
                continue
            was_paused = queue in self.paused
            pause = should_pause(
                pool.status(), inference.admission_max_depth, inference.resume_depth(), was_paused
            )
            if pause and not was_paused:
                log.warning(
                    "admission: every %s replica's queue is over %s; not taking runs from %s",
                    spec.backend,
                    inference.admission_max_depth,
                    queue,
                )
                c.cancel_task_queue(queue)
                self.paused.add(queue)
            elif was_paused and not pause:
                log.warning(
                    "admission: %s replicas have room again; taking runs from %s",
                    spec.backend,
                    queue,
                )
                c.add_task_queue(queue)
                self.paused.discard(queue)
