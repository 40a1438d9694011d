"""Which problem response each of agentq's errors becomes (RFC 9457)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

import redis
from kombu.exceptions import OperationalError

from app.api import problems
from app.errors import (
    AgentqError,
    IdempotencyConflictError,
    InputRejectedError,
    InvalidInputError,
    NotWaitingError,
    PayloadTooLargeError,
    RunEndedError,
    SignalTooLargeError,
    StoreError,
    SubmitError,
    UnknownAgentError,
    UnknownRunError,
)


@pytest.mark.parametrize(
    ("error", "status", "slug"),
    [
        (UnknownAgentError("unknown agent 'x'"), 422, "unknown-agent"),
        (InvalidInputError("'input' is required"), 422, "invalid-input"),
        (InputRejectedError("rejected by no_secrets"), 422, "input-rejected"),
        (IdempotencyConflictError("key reused"), 422, "idempotency-conflict"),
        (PayloadTooLargeError("input is 70000 bytes"), 413, "input-too-large"),
        (StoreError("database unreachable"), 503, "service-unavailable"),
        (UnknownRunError("no run 'x'"), 404, "run-not-found"),
        (RunEndedError("run x has ended"), 409, "run-ended"),
        (NotWaitingError("run x is running"), 409, "not-waiting"),
        (SignalTooLargeError("70000 bytes"), 413, "signal-too-large"),
        (redis.ConnectionError("Error 111 connecting"), 503, "service-unavailable"),
        (OperationalError("broker refused"), 503, "service-unavailable"),
    ],
)
def test_each_submit_error_has_its_status_and_type(
    error: Exception, status: int, slug: str
) -> None:
    kind = problems.kind_of(error)
    assert (kind.status, kind.slug) == (status, slug)


def test_a_new_subclass_gets_its_parents_problem_and_others_are_500() -> None:
    class NewRefusal(SubmitError):
        pass

    class TooLargeForSure(PayloadTooLargeError):
        pass

    assert problems.kind_of(NewRefusal("no")) is problems.SUBMIT_REFUSED
    assert problems.kind_of(TooLargeForSure("big")) is problems.INPUT_TOO_LARGE
    assert problems.kind_of(AgentqError("other")) is problems.INTERNAL
    assert problems.kind_of(ValueError("bug")) is problems.INTERNAL


def test_a_problem_response_is_problem_json_with_its_status() -> None:
    body = problems.problem(problems.INPUT_TOO_LARGE, "input is 70000 bytes; the limit is 65536")
    answer = problems.response(body)
    assert answer.status_code == 413
    assert answer.media_type == "application/problem+json"
    assert json.loads(answer.body) == {
        "type": "urn:agentq:problem:input-too-large",
        "title": "The run's input is too large",
        "status": 413,
        "detail": "input is 70000 bytes; the limit is 65536",
    }


def test_unavailable_tells_the_client_when_to_retry() -> None:
    answer = problems.response(problems.problem(problems.UNAVAILABLE, "Redis did not answer"))
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == str(problems.RETRY_AFTER_S)
