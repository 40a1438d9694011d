"""The run routes: submit a run, read it, follow its events.

Submitting goes through :func:`app.producer.submit.submit`, so a run is validated and refused
exactly as from Python; its typed errors become problem responses (:mod:`app.api.problems`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.api import problems
from app.api.auth import caller, require
from app.api.events import (
    BadEventIdError,
    relayed_events,
    resume_point,
    saw_the_end,
    stored_events,
)
from app.api.models import RunAccepted, RunCreate, RunLinks, RunStatusName, RunView
from app.api.state import Accepted, ApiState, api_state
from app.celery_ext.envelope import new_id
from app.constants import lease_key, stream_key
from app.memory.records import RunState
from app.producer.submit import submit

# Every route authenticates (caller); each also names its scope (require).
router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(caller)],
    responses=problems.responses(401, 403, 429),
)
SUBMIT = [Depends(require("submit"))]
READ = [Depends(require("read"))]

State = Annotated[ApiState, Depends(api_state)]

EVENTS_DESCRIPTION = """\
Server-Sent Events, each with `id:` (send it back as `Last-Event-ID` to resume) and `data:`
a JSON object: `attempt` (a step's model call begins; a second one for the same step voids
that step's earlier tokens), `token`, `step`, then `end`, the last. Runs submitted without
`stream` get `step` and `end` only, read from the session store. Comments (`: ping`) keep an
idle connection open. A reconnect after `end` gets 204, which stops an EventSource."""


def _links(run_id: str) -> RunLinks:
    return RunLinks(self=f"/v1/runs/{run_id}", events=f"/v1/runs/{run_id}/events")


def _not_found(run_id: str) -> JSONResponse:
    detail = (
        f"no run {run_id!r}: not in the session store, and not accepted by this API within "
        "api.accepted_ttl_s (a run submitted from Python is known once its first step is stored)"
    )
    return problems.response(problems.problem(problems.RUN_NOT_FOUND, detail))


@router.post(
    "",
    status_code=202,
    responses=problems.responses(413, 422, 503),
    summary="Submit a run",
    dependencies=SUBMIT,
)
def create_run(
    body: RunCreate,
    response: Response,
    api: State,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="A repeat with this key (same fields, within "
            "limits.idempotency_window_s) returns the first run instead of a new one.",
        ),
    ] = None,
) -> RunAccepted:
    """Validate and enqueue one run (as ``submit()``); 202 with its id and links."""
    run_id = new_id()
    result = submit(
        body.agent,
        body.input,
        body.session_id,
        run_id=run_id,
        stream=body.stream,
        budget=body.budget.model_dump(exclude_none=True) if body.budget else None,
        idempotency_key=idempotency_key,
        celery=api.celery,
    )
    if result.id == run_id:
        api.remember(run_id, Accepted(body.agent, body.session_id, body.stream))
    else:
        response.headers["Idempotent-Replayed"] = "true"
    links = _links(result.id)
    response.headers["Location"] = links.self
    return RunAccepted(id=result.id, links=links)


@router.get(
    "/{run_id}",
    response_model=RunView,
    responses=problems.responses(404, 503),
    summary="Read a run",
    dependencies=READ,
)
def read_run(run_id: str, api: State) -> RunView | JSONResponse:
    """The run: its status, steps (tool calls with arguments and results, tokens, latency,
    worker) and answer or error. A run this API accepted whose first step is not stored yet
    is ``queued`` (``running`` while a worker holds it)."""
    run = api.store.load_run(run_id)
    accepted = api.accepted(run_id)
    if run is not None:
        return RunView.of(run, accepted.stream if accepted else None)
    if accepted is None:
        return _not_found(run_id)
    status: RunStatusName = "running" if api.redis.exists(lease_key(run_id)) else "queued"
    return RunView(
        id=run_id,
        agent=accepted.agent,
        status=status,
        session_id=accepted.session_id,
        stream=accepted.stream,
    )


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": EVENTS_DESCRIPTION,
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        204: {"description": "The Last-Event-ID was the run's end: nothing more will come."},
        **problems.responses(400, 404, 503),
    },
    summary="Follow a run's events",
    dependencies=READ,
)
async def run_events(
    run_id: str,
    api: State,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this event (its `id:`)."),
    ] = None,
) -> Any:
    """The run's events until its end (see the 200 response)."""

    async def load_run() -> RunState | None:
        return await run_in_threadpool(api.store.load_run, run_id)

    accepted = await api.aaccepted(run_id)
    relayed = bool(await api.aredis.exists(stream_key(run_id))) or (
        accepted is not None and accepted.stream
    )
    try:
        resume = resume_point(last_event_id, relayed)
    except BadEventIdError as exc:
        return problems.response(problems.problem(problems.BAD_REQUEST, str(exc)))
    if not relayed and accepted is None and await load_run() is None:
        return _not_found(run_id)
    if await saw_the_end(api.aredis, run_id, resume, relayed):
        return Response(status_code=204)  # the SSE spec's "stop reconnecting"
    if relayed:
        source = relayed_events(api.aredis, run_id, resume, load_run)
    else:
        source = stored_events(load_run, resume, api.settings.api.poll_interval_s)
    return EventSourceResponse(
        source,
        ping=api.settings.api.keepalive_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
