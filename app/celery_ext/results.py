"""A run's result written as Celery's Redis result backend writes it, in our own round trips.

Celery stores a task's result as JSON under ``celery-task-meta-<id>`` and PUBLISHes it (what
``AsyncResult.get`` waits on). The worker writes the run's result itself, under the run id,
sometimes inside the MULTI that hands the run on: so it builds the backend's value here, from
the backend's own key naming, encoder and expiry (private names: :mod:`app.celery_ext`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import states


def result_value(backend: Any, run_id: str, state: str, result: Any) -> tuple[bytes, Any]:
    """Key and value of the run's result as Celery's Redis backend writes them."""
    meta = {
        "status": state,
        "result": result,
        "traceback": None,
        "children": [],
        "date_done": datetime.now(UTC).isoformat() if state in states.READY_STATES else None,
        "task_id": run_id,
    }
    return backend.get_key_for_task(run_id), backend.encode(meta)


def store_result(backend: Any, run_id: str, state: str, result: Any) -> None:
    """Write the run's result as Celery's Redis backend does (same key, JSON, PUBLISH), with
    its connection retries, but without ``store_result``'s read of the current result first
    (guarding a SUCCESS against a lost duplicate): the session store decides a run's end,
    and a run's answer is written only once it is final there. One round trip, not two.
    """
    backend.set(*result_value(backend, run_id, state, result))


def queue_result(pipe: Any, backend: Any, key: bytes, value: Any) -> None:
    """Queue on ``pipe`` what the Redis result backend's ``set`` sends: SET(EX), PUBLISH."""
    if backend.expires:
        pipe.setex(key, backend.expires, value)
    else:
        pipe.set(key, value)
    pipe.publish(key, value)


def with_retries(backend: Any, write: Callable[[], None]) -> None:
    """Run ``write`` with the result backend's retries on connection errors (as its ``set``
    rides out a Redis restart)."""
    backend.ensure(write, ())


def expecting_result(handle: Any) -> Any:
    """``handle``, the AsyncResult of a message sent with ``ignore_result``, made to wait for
    the result the worker stores under the run id itself (it would return None at once)."""
    handle.ignored = False
    return handle
