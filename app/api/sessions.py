"""The session routes: read a session, delete it everywhere (as ``agentq session show`` and
``delete`` do, :mod:`app.ops.sessions`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.api import problems
from app.api.auth import Caller, caller, require
from app.api.state import ApiState, api_state
from app.errors import TenantAccessError
from app.ops import sessions as sessions_view

router = APIRouter(
    prefix="/v1/sessions",
    tags=["sessions"],
    dependencies=[Depends(caller)],
    responses=problems.responses(401, 403, 429),
)
State = Annotated[ApiState, Depends(api_state)]


class SessionView(BaseModel):
    """A session: a conversation across runs, one run at a time."""

    id: str
    tenant: str = Field(description="Whose session it is (the API key's tenant).")
    agent: str = Field(description="The agent type of its first run.")
    created_at: datetime
    updated_at: datetime = Field(description="When a run of it last started or succeeded.")
    history_version: int = Field(description="Moves each time a run of it succeeds.")
    runs: dict[str, int] = Field(description="Its runs by status.")
    active_run: str | None = Field(description="The run holding it, while one runs.")
    runs_url: str = Field(description="GET: its runs, newest first.")


class SessionDeleted(BaseModel):
    """What deleting a session removed."""

    id: str
    runs: int
    steps: int
    redis_keys: int = Field(description="Cached history, token streams, markers and results.")


def _not_found(session_id: str) -> JSONResponse:
    detail = f"no session {session_id!r} in the session store"
    return problems.response(problems.problem(problems.SESSION_NOT_FOUND, detail))


@router.get(
    "/{session_id}",
    response_model=SessionView,
    responses=problems.responses(404, 503),
    summary="Read a session",
)
def read_session(
    session_id: str, api: State, who: Annotated[Caller, Depends(require("read"))]
) -> SessionView | JSONResponse:
    """The session: when it started and last moved, its runs by status and the run holding
    it; its runs are listed by ``GET /v1/runs?session_id=``."""
    try:
        info = sessions_view.session_info(api.store, session_id, who.tenant)
    except TenantAccessError:
        info = None  # another tenant's session: not this caller's to know of
    if info is None:
        return _not_found(session_id)
    return SessionView(**info.to_json(), runs_url=f"/v1/runs?session_id={session_id}")


@router.delete(
    "/{session_id}",
    response_model=SessionDeleted,
    responses=problems.responses(404, 409, 503),
    summary="Delete a session everywhere",
)
def delete_session(
    session_id: str,
    api: State,
    who: Annotated[Caller, Depends(require("operate"))],
    force: Annotated[
        bool, Query(description="Delete it even while one of its runs is running.")
    ] = False,
) -> SessionDeleted | JSONResponse:
    """Delete the session, its runs and their steps from SQL, and its cached history and its
    runs' token streams, markers and results from Redis. 409 while one of its runs is running,
    unless ``force`` (that run's next step then finds no run and is dead-lettered)."""
    try:
        deleted = sessions_view.delete_session(
            api.store, api.redis, session_id, force=force,
            forget_result=api.celery.backend.forget, tenant=who.tenant,
        )  # fmt: skip
    except TenantAccessError:
        deleted = None  # another tenant's session: not this caller's to know of
    if deleted is None:
        return _not_found(session_id)
    return SessionDeleted(
        id=session_id, runs=deleted.runs, steps=deleted.steps, redis_keys=deleted.redis_keys
    )
