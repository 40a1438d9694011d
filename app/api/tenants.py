"""The tenant routes: the caller's own tenant as a whole, exported or deleted (as ``agentq
tenant export`` and ``delete`` do, :mod:`app.ops.tenants`). A key only ever reaches its own
tenant's data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from app.api import problems
from app.api.auth import Caller, caller, require
from app.api.models import run_json
from app.api.state import ApiState, api_state
from app.errors import TenantInUseError
from app.ops import tenants as tenants_view

router = APIRouter(
    prefix="/v1/tenant",
    tags=["tenants"],
    dependencies=[Depends(caller)],
    responses=problems.responses(401, 403, 429),
)
State = Annotated[ApiState, Depends(api_state)]
Operator = Annotated[Caller, Depends(require("operate"))]


class TenantDeleted(BaseModel):
    """What deleting the tenant removed."""

    tenant: str
    runs: int
    steps: int
    sessions: int
    memories: int
    redis_keys: int = Field(description="Streams, markers, results and cached entries.")


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": 'JSON lines: {"session": ...} per session, {"run": ...} per run (as '
            'GET /v1/runs/{id} shows it), {"memory": ...} per long-term memory.',
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **problems.responses(503),
    },
    summary="Export the key's tenant",
)
def export_tenant(api: State, who: Operator) -> StreamingResponse:
    """Everything of the key's tenant, one JSON object per line, streamed."""
    items = tenants_view.export_tenant(
        api.store, who.tenant, run_json, tenants_view.memories_of(api.store)
    )

    def lines() -> Iterator[bytes]:
        for item in items:
            yield (json.dumps(item, default=str) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.delete(
    "",
    response_model=TenantDeleted,
    responses=problems.responses(409, 503),
    summary="Delete the key's tenant everywhere",
)
def delete_tenant(
    api: State,
    who: Operator,
    force: Annotated[
        bool, Query(description="Delete it even while one of its runs is running.")
    ] = False,
) -> TenantDeleted | JSONResponse:
    """Delete every run, session and memory of the key's tenant, and its streams, results and
    cached entries in Redis. 409 while one of its runs is running, unless ``force``. Runs
    still queued are not touched: stop submitting first. The key itself stays."""
    try:
        deleted = tenants_view.delete_tenant(
            api.store, api.redis, who.tenant, force=force,
            forget_result=api.celery.backend.forget, memories=tenants_view.memories_of(api.store),
        )  # fmt: skip
    except TenantInUseError as exc:
        return problems.response(problems.problem(problems.TENANT_IN_USE, str(exc)))
    return TenantDeleted(
        tenant=who.tenant, runs=deleted.runs, steps=deleted.steps, sessions=deleted.sessions,
        memories=deleted.memories, redis_keys=deleted.redis_keys,
    )  # fmt: skip
