"""A worker's periodic upkeep (recovery passes, the poll for due timers) in a daemon thread of
its own: it reads SQL and Redis, so it stays off the consumer's event loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


class Periodic:
    """Calls ``action`` every ``interval_s`` until stopped; a call that fails is logged and
    the next one tries again (Redis or SQL away)."""

    def __init__(self, name: str, action: Callable[[], None], interval_s: float) -> None:
        self.name, self.action, self.interval_s = name, action, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"agentq-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.action()
            except Exception:  # Redis or SQL away: the next call tries again
                log.warning("%s failed", self.name, exc_info=True)


class PeriodicStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep running the :class:`Periodic` that :meth:`periodic` makes (None: this
    worker does without) while the worker runs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.thread: Periodic | None = None

    def periodic(self, worker: Any) -> Periodic | None:
        raise NotImplementedError

    def start(self, worker: Any) -> None:
        self.thread = self.periodic(worker)
        if self.thread is not None:
            self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    shutdown = stop
