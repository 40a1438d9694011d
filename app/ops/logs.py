"""Log lines as text (Celery's format) or JSON, one object per line, with the step they belong to.

``AGENTQ_LOG_FORMAT=json`` makes ``agentq worker``, ``agentq exporter`` and ``agentq flower``
write each Python log record as one JSON object: ``time``, ``level``, ``logger``, ``message``,
``run_id``/``agent``/``step`` when logged inside a step (see :func:`step_context`), ``task_id``
for Celery's task lines, and ``exc`` with a traceback.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

# The step a thread is running, for every record it logs meanwhile.
_step: ContextVar[dict[str, Any] | None] = ContextVar("agentq_step", default=None)


@contextmanager
def step_context(run_id: str, agent: str, step: int) -> Iterator[None]:
    """Tag the log records of the block with the run, agent type and step."""
    token = _step.set({"run_id": run_id, "agent": agent, "step": step})
    try:
        yield
    finally:
        _step.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; only the fields below, never a record's ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        step = _step.get()
        if step is not None:
            doc.update(step)
        # Celery's task lines carry the task id in `data` (its other fields, the arguments
        # included, are left out).
        data = getattr(record, "data", None)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            doc["task_id"] = data["id"]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure(
    log_format: str, level: str | int = logging.INFO, stream: IO[str] | None = None
) -> None:
    """Send the root logger's records to ``stream`` (stderr) as ``log_format`` (text or json).

    In JSON mode Celery is told that logging is set up, so it neither adds its own handlers
    (the worker's, the task logger's) nor redirects stdout; text mode leaves Celery's defaults.
    """
    if log_format != "json":
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.captureWarnings(True)
    from celery import signals

    # A receiver of setup_logging means "configured already" to Celery (celery.app.log).
    signals.setup_logging.connect(_celery_logging_is_set_up, weak=False)


def _celery_logging_is_set_up(**_: Any) -> None:
    return None
