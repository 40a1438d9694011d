"""A worker's poll for parked runs whose time has come: a timer (``sleep``) falls due, a wait
passes its timeout. Every ``orchestration.timer_poll_s`` one read finds the due waits (of any
agent type; ix_waits_due keeps it one index range), and only when there are some a write
transaction ends them (:func:`app.memory.endings.fire`); the runs that resume are published as
a signal's are. Workers race safely: a wait ends once, whichever worker's transaction gets
there first. With every worker scaled to zero, the exporter counts due waits in
``agentq_backlog``, so KEDA starts one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery, bootsteps

from app.celery_ext.context import context_of
from app.memory import endings, waits
from app.memory.records import utc_now
from app.memory.sessions import SessionStore
from app.tasks.effects import carry_out

log = logging.getLogger(__name__)


def fire_due(celery: Celery, store: SessionStore, limit: int) -> int:
    """End the waits that are due (at most ``limit``); how many ended."""
    now = utc_now()
    if not store.read(lambda conn: waits.due(conn, now, None, 1)):
        return 0
    effects = waits.Effects()
    with store.write() as conn:
        due = waits.due(conn, now, None, limit)
        for wait in due:
            effects.extend(endings.fire(conn, wait, now))
    carry_out(celery, effects)
    return len(due)


class TimerThread:
    """Polls every ``interval_s`` in a thread of its own (``store`` made at the first poll)."""

    def __init__(
        self, celery: Celery, store: Callable[[], SessionStore], interval_s: float, limit: int
    ) -> None:
        self.celery, self.store, self.interval_s, self.limit = celery, store, interval_s, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentq-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                while fire_due(self.celery, self.store(), self.limit) >= self.limit:
                    pass  # a full batch: more may be due
            except Exception:  # the store or Redis away: the next poll tries again
                log.warning("timer poll failed", exc_info=True)


class TimerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: fire due timers and timeouts of parked runs while the worker runs."""

    label = "agentq timers"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: TimerThread | None = None

    def start(self, worker: Any) -> None:
        app, hostname = worker.app, worker.hostname or ""
        settings = context_of(app).settings.orchestration

        def store() -> SessionStore:
            from app.tasks.runtime import runtime_for

            return runtime_for(app, hostname).store

        self.thread = TimerThread(app, store, settings.timer_poll_s, settings.timer_batch)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    shutdown = stop
