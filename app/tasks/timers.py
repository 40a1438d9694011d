"""A worker's poll for parked runs whose time has come: a timer (``sleep``) falls due, a wait
passes its timeout. Every ``orchestration.timer_poll_s`` one read finds the due waits (of any
agent type; ix_waits_due keeps it one index range), and only when there are some a write
transaction ends them (:func:`app.memory.endings.fire`); the runs that resume are published as
a signal's are. Workers race safely: a wait ends once, whichever worker's transaction gets
there first. With every worker scaled to zero, the exporter counts due waits in
``agentq_backlog``, so KEDA starts one.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.celery_ext.context import context_of
from app.memory import endings, waits
from app.memory.records import utc_now
from app.memory.sessions import SessionStore
from app.tasks.effects import carry_out
from app.tasks.periodic import Periodic, PeriodicStep


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


class TimerStep(PeriodicStep):
    """Worker bootstep: fire due timers and timeouts of parked runs while the worker runs."""

    label = "agentq timers"

    def periodic(self, worker: Any) -> Periodic | None:
        app, hostname = worker.app, worker.hostname or ""
        settings = context_of(app).settings.orchestration

        def poll() -> None:
            from app.tasks.runtime import runtime_for  # the worker's clients by then

            store = runtime_for(app, hostname).store
            while fire_due(app, store, settings.timer_batch) >= settings.timer_batch:
                pass  # a full batch: more may be due

        return Periodic("timer poll", poll, settings.timer_poll_s)
