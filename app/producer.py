"""Producers: validate a run at the edge, then enqueue it. Nothing invalid reaches a queue."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery

from app.agents import AgentRegistry
from app.config import Settings
from app.constants import TASK_RUN_AGENT
from app.errors import InvalidInputError
from app.streaming import RunResult
from app.validation import validate_run


def _registry(celery: Celery) -> AgentRegistry:
    return celery.agentq_registry  # type: ignore[attr-defined,no-any-return]


def _settings(celery: Celery) -> Settings:
    return celery.agentq_settings  # type: ignore[attr-defined,no-any-return]


def _default_celery(celery: Celery | None) -> Celery:
    if celery is not None:
        return celery
    from app.celery_app import get_celery

    return get_celery()


def submit(
    agent: str,
    input: Any,
    session_id: str | None = None,
    *,
    run_id: str | None = None,
    stream: bool = False,
    celery: Celery | None = None,
) -> RunResult:
    """Validate and enqueue one run; ``.get()`` on the result waits for its answer.

    With ``stream=True`` the worker relays the model's tokens as they come:
    ``for token in result.stream(): ...`` (or ``async for token in result.astream()``).
    """
    celery = _default_celery(celery)
    req = validate_run(
        _registry(celery), _settings(celery), agent, input, session_id, run_id, stream
    )
    return celery.tasks[TASK_RUN_AGENT].apply_async(  # type: ignore[no-any-return]
        kwargs=req.kwargs(), task_id=req.run_id, queue=req.queue
    )


def submit_many(
    runs: Iterable[Mapping[str, Any]],
    *,
    celery: Celery | None = None,
    batch_size: int = 1000,
) -> list[RunResult]:
    """Validate every run first, then enqueue all of them through pipelined Redis writes.

    Each item is a mapping with ``agent``, ``input`` and optionally ``session_id``,
    ``run_id`` and ``stream``. If any item is invalid, nothing is enqueued.
    """
    celery = _default_celery(celery)
    registry, settings = _registry(celery), _settings(celery)
    requests = []
    for i, item in enumerate(runs):
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"run #{i} must be a mapping, got {type(item).__name__}")
        unknown = set(item) - {"agent", "input", "session_id", "run_id", "stream"}
        if unknown:
            raise InvalidInputError(f"run #{i} has unknown fields: {sorted(unknown)}")
        requests.append(
            validate_run(
                registry,
                settings,
                item.get("agent"),
                item.get("input"),
                item.get("session_id"),
                item.get("run_id"),
                item.get("stream", False),
            )
        )
    task = celery.tasks[TASK_RUN_AGENT]
    with celery.producer_or_acquire() as producer, producer.batch(max_size=batch_size):
        return [
            task.apply_async(
                kwargs=req.kwargs(), task_id=req.run_id, queue=req.queue, producer=producer
            )
            for req in requests
        ]
