"""Errors as RFC 9457 problem responses (``application/problem+json``): which status and type
each of agentq's errors gets, and the handlers that write them.

The mapping is data (:data:`PROBLEMS`), looked up by the error's class and its bases, so a
new subclass of a mapped error gets its parent's answer until it is given its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from app.errors import (
    AgentqError,
    BadCursorError,
    IdempotencyConflictError,
    InputRejectedError,
    InvalidInputError,
    NotDeadLetteredError,
    NotWaitingError,
    PayloadTooLargeError,
    QuarantinedMessageError,
    RunEndedError,
    SessionInUseError,
    SignalTooLargeError,
    StoreError,
    SubmitError,
    TenantAccessError,
    TenantInUseError,
    UnknownAgentError,
    UnknownRunError,
)

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:agentq:problem:"
"""Problem types are URNs (RFC 9457 allows any URI; these are names, never fetched); docs/api.md
describes each one."""


class Problem(BaseModel):
    """What went wrong with a request (RFC 9457)."""

    type: str = Field(description="URN naming the kind of problem (docs/api.md lists them).")
    title: str = Field(description="The kind of problem, in words; the same for every instance.")
    status: int = Field(description="The HTTP status code of the response.")
    detail: str = Field(description="What happened in this request and what to do about it.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="For 'invalid-request': each field that failed, as pydantic says."
    )


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of problem: its type's last path segment, its title and its status code."""

    slug: str
    title: str
    status: int


UNKNOWN_AGENT = Kind("unknown-agent", "No such agent type", 422)
INVALID_INPUT = Kind("invalid-input", "The run's fields are invalid", 422)
INPUT_REJECTED = Kind("input-rejected", "An input validator rejected the run", 422)
IDEMPOTENCY_CONFLICT = Kind(
    "idempotency-conflict", "Idempotency key reused for a different run", 422
)
INPUT_TOO_LARGE = Kind("input-too-large", "The run's input is too large", 413)
SUBMIT_REFUSED = Kind("submit-refused", "The run was refused", 422)
INVALID_REQUEST = Kind("invalid-request", "The request does not match its schema", 422)
UNAVAILABLE = Kind("service-unavailable", "A service the API needs is unavailable", 503)
NOT_FOUND = Kind("not-found", "No such resource", 404)
RUN_NOT_FOUND = Kind("run-not-found", "No such run", 404)
SESSION_NOT_FOUND = Kind("session-not-found", "No such session", 404)
SESSION_IN_USE = Kind("session-in-use", "A run of the session is running", 409)
TENANT_IN_USE = Kind("tenant-in-use", "A run of the tenant is running", 409)
BAD_REQUEST = Kind("bad-request", "Bad request", 400)
NOT_DEAD_LETTERED = Kind("not-dead-lettered", "The run is not in the dead-letter queue", 409)
NOTHING_TO_REPLAY = Kind("nothing-to-replay", "The dead letter has no run to replay", 409)
RUN_ENDED = Kind("run-ended", "The run has ended", 409)
NOT_WAITING = Kind("not-waiting", "The run is not waiting for this signal", 409)
SIGNAL_TOO_LARGE = Kind("signal-too-large", "The signal's data is too large", 413)
UNAUTHENTICATED = Kind("unauthenticated", "Missing, unknown or revoked API key", 401)
FORBIDDEN = Kind("forbidden", "The API key lacks the scope this route needs", 403)
RATE_LIMITED = Kind("rate-limited", "The API key is over its rate limit", 429)
INTERNAL = Kind("internal-error", "Internal error", 500)

PROBLEMS: dict[type[Exception], Kind] = {
    UnknownAgentError: UNKNOWN_AGENT,
    InvalidInputError: INVALID_INPUT,
    InputRejectedError: INPUT_REJECTED,
    IdempotencyConflictError: IDEMPOTENCY_CONFLICT,
    PayloadTooLargeError: INPUT_TOO_LARGE,
    SubmitError: SUBMIT_REFUSED,
    BadCursorError: BAD_REQUEST,
    NotDeadLetteredError: NOT_DEAD_LETTERED,
    QuarantinedMessageError: NOTHING_TO_REPLAY,
    UnknownRunError: RUN_NOT_FOUND,  # another tenant's run too: not this caller's to know of
    RunEndedError: RUN_ENDED,
    NotWaitingError: NOT_WAITING,
    SignalTooLargeError: SIGNAL_TOO_LARGE,
    SessionInUseError: SESSION_IN_USE,
    TenantInUseError: TENANT_IN_USE,
    TenantAccessError: NOT_FOUND,  # as if it did not exist: not this caller's to know of
    StoreError: UNAVAILABLE,
    redis.RedisError: UNAVAILABLE,
    OperationalError: UNAVAILABLE,  # kombu's: the broker refused a publish
}
"""Error class -> its problem; an error not here (nor any of its bases) is a 500."""

RETRY_AFTER_S = 1
"""Retry-After of a 503: Redis or SQL restarting is back within seconds."""


def kind_of(exc: BaseException) -> Kind:
    """The problem kind of ``exc``: that of its class, else of its nearest mapped base."""
    for cls in type(exc).__mro__:
        kind = PROBLEMS.get(cls)
        if kind is not None:
            return kind
    return INTERNAL


def problem(kind: Kind, detail: str, **extra: Any) -> Problem:
    """The problem body of one instance of ``kind``."""
    return Problem(
        type=TYPE_BASE + kind.slug, title=kind.title, status=kind.status, detail=detail, **extra
    )


def response(body: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    """``body`` as an ``application/problem+json`` response with its status."""
    if body.status == UNAVAILABLE.status:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=body.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _detail(exc: BaseException) -> str:
    if isinstance(exc, AgentqError):
        return str(exc)
    # Connection errors name hosts and ports, not secrets; the class says which service.
    return f"{type(exc).__name__}: {exc}; retry shortly"


async def _on_error(_request: Request, exc: Exception) -> JSONResponse:
    return response(problem(kind_of(exc), _detail(exc)))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return response(problem(INTERNAL, "see the API's log"))


async def _on_invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
    return response(problem(INVALID_REQUEST, where, errors=errors))


async def _on_http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kinds = {
        kind.status: kind
        for kind in (
            NOT_FOUND,
            BAD_REQUEST,
            INPUT_TOO_LARGE,
            UNAUTHENTICATED,
            FORBIDDEN,
            RATE_LIMITED,
        )
    }
    kind = kinds.get(exc.status_code, Kind("http-error", "HTTP error", exc.status_code))
    return response(problem(kind, str(exc.detail)), dict(exc.headers or {}))


def install(app: FastAPI) -> None:
    """Make every error ``app`` answers a problem response."""
    app.add_exception_handler(RequestValidationError, _on_invalid_request)
    app.add_exception_handler(HTTPException, _on_http_error)
    for cls in PROBLEMS:
        app.add_exception_handler(cls, _on_error)
    app.add_exception_handler(Exception, _on_unexpected)


_DESCRIPTIONS = {
    400: "A header or parameter is malformed.",
    401: "No API key, or one unknown or revoked (with WWW-Authenticate: Bearer).",
    403: "The API key lacks the scope this route needs.",
    429: "The API key is over its rate limit; retry after Retry-After (seconds).",
    404: "No such run (or session).",
    409: "The run is not dead-lettered, or its dead letter has no run to replay; or the "
    "session to delete has a running run; or a signal's run has ended or does not wait for "
    "it.",
    413: "The run's input (or a signal's data) is larger than allowed.",
    422: "The request does not match its schema, or submit() refused the run.",
    503: "Redis, the broker or the session store did not answer; retry after Retry-After.",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route's problem statuses."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}
