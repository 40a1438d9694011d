"""Producers: validate a run at the edge, then enqueue it. Nothing invalid reaches a queue."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from app.agents import AgentRegistry
from app.config import Settings
from app.constants import TASK_RUN_AGENT
from app.errors import InvalidInputError, PayloadTooLargeError
from app.routing import queue_for_agent


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A validated run, ready to enqueue."""

    agent: str
    input: Any
    session_id: str | None
    queue: str
    run_id: str

    def kwargs(self) -> dict[str, Any]:
        """The task's keyword arguments (the wire format, JSON)."""
        return {"agent": self.agent, "input": self.input, "session_id": self.session_id}


def _check_json(value: Any, path: str = "input") -> None:
    # json.dumps accepts NaN and non-str keys are coerced; both break other consumers.
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{path} holds {value!r}, which JSON cannot carry")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInputError(f"{path} has a non-string key {key!r}")
            _check_json(item, f"{path}.{key}")
        return
    raise InvalidInputError(f"{path} holds a {type(value).__name__}, which is not JSON")


def validate_run(
    registry: AgentRegistry,
    settings: Settings,
    agent: Any,
    input: Any,
    session_id: Any = None,
    run_id: str | None = None,
) -> RunRequest:
    """Check one run's fields and return it as a :class:`RunRequest`, or raise a SubmitError."""
    queue = queue_for_agent(registry.queues(), agent)
    spec = registry.get(agent)
    assert spec is not None
    if input is None or (isinstance(input, str) and not input.strip()):
        raise InvalidInputError("'input' is required and must not be empty")
    _check_json(input)
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise InvalidInputError(f"'session_id' must be a non-empty string, got {session_id!r}")
    limit = spec.max_input_bytes or settings.limits.max_input_bytes
    size = len(json.dumps(input).encode())
    if size > limit:
        raise PayloadTooLargeError(
            f"input of agent {agent!r} is {size} bytes once JSON-encoded; the limit is {limit}"
        )
    return RunRequest(agent, input, session_id, queue, run_id or str(uuid.uuid4()))


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
    celery: Celery | None = None,
) -> AsyncResult:
    """Validate and enqueue one run; ``.get()`` on the result waits for its answer."""
    celery = _default_celery(celery)
    req = validate_run(_registry(celery), _settings(celery), agent, input, session_id, run_id)
    return celery.tasks[TASK_RUN_AGENT].apply_async(
        kwargs=req.kwargs(), task_id=req.run_id, queue=req.queue
    )


def submit_many(
    runs: Iterable[Mapping[str, Any]],
    *,
    celery: Celery | None = None,
    batch_size: int = 1000,
) -> list[AsyncResult]:
    """Validate every run first, then enqueue all of them through pipelined Redis writes.

    Each item is a mapping with ``agent``, ``input`` and optionally ``session_id`` and
    ``run_id``. If any item is invalid, nothing is enqueued.
    """
    celery = _default_celery(celery)
    registry, settings = _registry(celery), _settings(celery)
    requests = []
    for i, item in enumerate(runs):
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"run #{i} must be a mapping, got {type(item).__name__}")
        unknown = set(item) - {"agent", "input", "session_id", "run_id"}
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
