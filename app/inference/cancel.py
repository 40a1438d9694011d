"""Aborting a model call in flight when its run is cancelled.

A caller hands a backend a :class:`threading.Event` (``cancel``); the backend registers what
aborts its call (cancel the gRPC call, shut the HTTP connection's socket) with
:func:`abort_when`. One daemon thread per process looks at the registered events every
:data:`CHECK_S` and runs an action once its event is set, so a thread blocked in a read is
woken from outside without each call polling.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterator

from app.errors import ModelCallCancelledError

log = logging.getLogger(__name__)

CHECK_S = 0.05
"""How often the events are looked at: a cancelled call is aborted within about this long."""


def check(cancel: threading.Event | None, where: str) -> None:
    """Raise ModelCallCancelledError when ``cancel`` is set (the call is not made, or stops)."""
    if cancel is not None and cancel.is_set():
        raise ModelCallCancelledError(f"model call to {where} cancelled: its run was cancelled")


class AbortPoller:
    """Runs each registered action once its event is set, from one daemon thread that sleeps
    while nothing is registered."""

    def __init__(self, interval_s: float = CHECK_S) -> None:
        self.interval_s = interval_s
        self._cond = threading.Condition()
        self._watched: dict[int, tuple[threading.Event, Callable[[], None]]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, cancel: threading.Event, action: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``action`` runs (once, from the poller's thread) as soon as
        ``cancel`` is set."""
        key = next(self._ids)
        with self._cond:
            idle = not self._watched
            self._watched[key] = (cancel, action)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="agentq-model-call-aborts", daemon=True
                )
                self._thread.start()
            elif idle:  # a busy poller looks at the new event on its next round anyway
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._watched.pop(key, None)

    def _due(self) -> list[Callable[[], None]]:
        with self._cond:
            while not self._watched:
                self._cond.wait()
            due = [key for key, (event, _) in self._watched.items() if event.is_set()]
            return [self._watched.pop(key)[1] for key in due]

    def _run(self) -> None:
        while True:
            for action in self._due():
                try:
                    action()
                except Exception:  # one failed abort must not stop the others'
                    log.exception("aborting a cancelled model call failed")
            with self._cond:
                if self._watched:
                    self._cond.wait(self.interval_s)


_POLLER = AbortPoller()


@contextlib.contextmanager
def abort_when(cancel: threading.Event | None, action: Callable[[], None]) -> Iterator[None]:
    """While the block runs, run ``action`` once ``cancel`` is set (nothing when it is None)."""
    if cancel is None:
        yield
        return
    with _POLLER.watching(cancel, action):
        yield
