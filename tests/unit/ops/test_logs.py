"""JSON log lines: one object per record, tagged with the step they were logged in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from app.ops import logs


@pytest.fixture
def json_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("agentq.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line(json_logger) -> None:
    logger, stream = json_logger
    logger.warning("replica %s: breaker\nopened", "t-1", extra={"data": {"args": "secret"}})
    (line,) = lines(stream)
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "WARNING" and line["logger"] == "agentq.test.logs"
    assert line["message"] == "replica t-1: breaker\nopened"
    assert line["time"].endswith("+00:00")


def test_records_inside_a_step_carry_it(json_logger) -> None:
    logger, stream = json_logger
    with logs.step_context("run-1", "research", 3):
        logger.info("in the step")
    logger.info("after it")
    inside, after = lines(stream)
    assert (inside["run_id"], inside["agent"], inside["step"]) == ("run-1", "research", 3)
    assert "run_id" not in after


def test_celery_task_lines_name_their_task_and_errors_their_traceback(json_logger) -> None:
    logger, stream = json_logger
    logger.info("Task x succeeded", extra={"data": {"id": "run-1:2", "kwargs": "{'p': 1}"}})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    task, error = lines(stream)
    assert task["task_id"] == "run-1:2" and "kwargs" not in json.dumps(task)
    assert error["exc"].startswith("Traceback") and "ValueError: boom" in error["exc"]
