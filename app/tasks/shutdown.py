"""Graceful shutdown: on SIGTERM, finish the steps in flight, hand back what cannot finish.

Celery's warm shutdown (SIGTERM) stops consuming and waits for running tasks, without a
bound; Kubernetes sends SIGKILL after ``terminationGracePeriodSeconds``, and a killed
worker's messages come back only after the visibility timeout. Celery's own soft shutdown
is tied to the cold path, whose task cancel is not implemented for the threads pool. So
this worker step gives the warm shutdown a deadline (``worker.soft_shutdown_timeout_s``):

1. steps that finish in time commit and publish their next step as usual: the rest of the
   run waits in its queue for another worker;
2. at the deadline, every message still unacknowledged (steps in flight, retries waiting
   for their countdown) is put back on its queue at once, the run leases held here are
   released, and the process exits. A step cut short committed nothing, so it runs again
   from its start elsewhere and no step runs twice.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery, bootsteps
from celery.signals import worker_shutting_down

from app.celery_ext.context import context_of
from app.celery_ext.worker import requeue_unacknowledged

log = logging.getLogger(__name__)

EXIT_HANDED_BACK = 0
"""Exit code after handing steps back: a clean stop, as far as the orchestrator is concerned."""


def hand_back(app: Celery) -> int:
    """Requeue every unacknowledged message of this worker and release its run leases."""
    handed = requeue_unacknowledged()
    runtime = context_of(app).runtime
    released = runtime.runner.leases.release_all() if runtime is not None else 0
    log.warning("shutdown deadline: handed back %d step(s), released %d lease(s)", handed, released)
    return handed


class GracefulShutdown(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step: a deadline on SIGTERM's warm shutdown (see the module docstring)."""

    label = "agentq graceful shutdown"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.app: Celery = worker.app
        self.timeout_s = float(context_of(self.app).settings.worker.soft_shutdown_timeout_s)
        self._armed = False
        worker_shutting_down.connect(self._on_shutting_down, weak=False)

    def _on_shutting_down(self, sig: str = "", how: str = "", **_: Any) -> None:
        # Runs in the signal handler: only start a timer here.
        if how != "Warm" or self._armed:
            return
        self._armed = True
        log.warning(
            "%s: finishing steps in flight, handing back the rest in %.0f s", sig, self.timeout_s
        )
        timer = threading.Timer(self.timeout_s, self._deadline)
        timer.daemon = True
        timer.start()

    def _deadline(self) -> None:
        hand_back(self.app)
        logging.shutdown()
        os._exit(EXIT_HANDED_BACK)  # threads still in a model call cannot be stopped otherwise

    def stop(self, worker: Any) -> None:
        worker_shutting_down.disconnect(self._on_shutting_down)
        runtime = context_of(self.app).runtime
        if runtime is not None:
            runtime.runner.leases.release_all()
            runtime.runner.tools.close()  # tool processes end with the worker
