"""A worker's ear for run cancellations: the event that aborts a run's model call in flight.

A cancellation sets ``cancel_key(run_id)`` and then PUBLISHes the run id on
``CANCEL_CHANNEL``. One daemon thread per process subscribes to the channel and sets the
events of the runs being watched. A message published while the thread was not subscribed
(while Redis restarted) is not lost: every watched run's key is read after each subscription
that follows a failure, in one pipeline; a watch may ask for its run's key to be read when it starts
(``check_key``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import redis

from app.constants import CANCEL_CHANNEL, cancel_key

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How long the thread waits for a message before it looks at newly watched runs."""
RECONNECT_S = 1.0
"""Pause before the thread subscribes again after Redis failed it."""


class CancelWatcher:
    """Events set when the runs they watch are cancelled; safe to use from many threads.

    ``watch`` costs no round trip: a run's key is read by the thread, batched with the other
    runs whose watch started meanwhile, within about :data:`POLL_S`.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._runs: dict[str, list[threading.Event]] = {}
        self._unchecked: set[str] = set()  # watched runs whose key is still to be read
        self._subscribed = False  # the thread has subscribed once (a later one is again)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextlib.contextmanager
    def watch(self, run_id: str, *, check_key: bool = False) -> Iterator[threading.Event]:
        """An event set once ``run_id``'s cancellation is asked for while the block runs.

        ``check_key``: also when it was asked before the watch started (its key is read, in
        the thread's next batch). A step does without: it has read its run's
        ``cancel_requested_at`` from SQL just before, and a first step that did not is found
        cancelled by its commit; so a step sends Redis nothing here."""
        event = threading.Event()
        with self._lock:
            self._runs.setdefault(run_id, []).append(event)
            if check_key:
                self._unchecked.add(run_id)
        self._start()
        try:
            yield event
        finally:
            with self._lock:
                events = self._runs.get(run_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._runs.pop(run_id, None)
                    self._unchecked.discard(run_id)

    def watched(self) -> list[str]:
        """The runs being watched now."""
        with self._lock:
            return list(self._runs)

    def close(self) -> None:
        """Stop the thread (watches in progress are no longer told)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _start(self) -> None:
        with self._lock:
            # A forked worker process inherits the object, not the thread.
            alive = self._thread is not None and self._thread.is_alive()
            if (alive and self._pid == os.getpid()) or self._stop.is_set():
                return
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="agentq-cancel", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(CANCEL_CHANNEL)
                while not self._stop.is_set():
                    self._handle(pubsub.get_message(timeout=POLL_S))
                    self._check_keys()
            except Exception as exc:  # the thread must outlive any one failure
                # Redis errors, and what redis-py raises for a connection closed under the
                # read (a TypeError from its parser): subscribe again rather than stop telling.
                if self._stop.is_set():
                    return
                log.warning("cancellations: Redis failed (%r); subscribing again", exc)
                self._stop.wait(RECONNECT_S)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _handle(self, message: dict[str, Any] | None) -> None:
        if message is None:
            return
        if message["type"] == "subscribe":
            # Subscribed again (Redis failed it): what was published meanwhile is read from
            # the keys. Not at the first subscription: a step has read its run's cancellation
            # from SQL just before its watch, as it does without the thread.
            with self._lock:
                if self._subscribed:
                    self._unchecked.update(self._runs)
                self._subscribed = True
            return
        if message["type"] == "message":
            data = message["data"]
            self._cancelled([data.decode() if isinstance(data, bytes) else str(data)])

    def _check_keys(self) -> None:
        with self._lock:
            runs, self._unchecked = list(self._unchecked), set()
        if not runs:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for run_id in runs:
                pipe.exists(cancel_key(run_id))
            found = pipe.execute()
        except redis.RedisError:
            with self._lock:  # read again once Redis is back
                self._unchecked.update(r for r in runs if r in self._runs)
            raise
        self._cancelled([run_id for run_id, n in zip(runs, found, strict=True) if n])

    def _cancelled(self, runs: list[str]) -> None:
        with self._lock:
            events = [event for run_id in runs for event in self._runs.get(run_id, [])]
        for event in events:
            event.set()
