"""The run routes: submit a run, list runs, read one, follow its events.

Submitting goes through :func:`app.producer.submit.submit`, so a run is validated and refused
exactly as from Python; its typed errors become problem responses (:mod:`app.api.problems`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from app.api import problems
from app.api.auth import Caller, caller, require
from app.api.events import (
    BadEventIdError,
    relayed_events,
    resume_point,
    saw_the_end,
    stored_events,
)
from app.api.models import (
    CancelDone,
    RunAccepted,
    RunCreate,
    RunItem,
    RunLinks,
    RunList,
    RunReplayed,
    RunStatusName,
    RunView,
    SignalCreate,
    SignalSent,
)
from app.api.state import ApiState, api_state
from app.celery_ext import queued
from app.celery_ext.context import context_of
from app.celery_ext.envelope import new_id
from app.constants import stream_key
from app.errors import InvalidInputError, TenantAccessError
from app.memory.records import RunState
from app.ops import runs as runs_view
from app.producer import control
from app.producer.submit import submit
from app.tasks import dead_letters

# Every route authenticates (caller); each also names its scope (require).
router = APIRouter(
    prefix="/v1/runs",
    tags=["runs"],
    dependencies=[Depends(caller)],
    responses=problems.responses(401, 403, 429),
)
Submitter = Annotated[Caller, Depends(require("submit"))]
Reader = Annotated[Caller, Depends(require("read"))]
Operator = Annotated[Caller, Depends(require("operate"))]

State = Annotated[ApiState, Depends(api_state)]
MAX_LIMIT = 500

EVENTS_DESCRIPTION = """\
Server-Sent Events, each with `id:` (send it back as `Last-Event-ID` to resume) and `data:`
a JSON object: `attempt` (a step's model call begins; a second one for the same step voids
that step's earlier tokens), `token`, `step`, then `end`, the last. Runs submitted without
`stream` get `step` and `end` only, read from the session store. Other kinds a worker writes
(about waits and sub-agent runs) come as events of their own name, with `step` and their
data. Comments (`: ping`) keep an idle connection open. A reconnect after `end` gets 204,
which stops an EventSource."""


def _links(run_id: str) -> RunLinks:
    return RunLinks.of(run_id)


def _not_found(run_id: str) -> JSONResponse:
    detail = (
        f"no run {run_id!r}: not in the session store, nor queued (submitted with submit() or "
        "this API within limits.queued_ttl_s)"
    )
    return problems.response(problems.problem(problems.RUN_NOT_FOUND, detail))


@router.get(
    "",
    response_model=RunList,
    responses=problems.responses(400, 503),
    summary="List runs",
)
def list_runs(
    api: State,
    who: Reader,
    agent: Annotated[str | None, Query(description="Only this agent type's runs.")] = None,
    status: Annotated[RunStatusName | None, Query(description="Only runs in this status.")] = None,
    session_id: Annotated[str | None, Query(description="Only this session's runs.")] = None,
    cursor: Annotated[
        str | None, Query(description="`next_cursor` of the previous page (none: the first).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Runs per page.")] = 50,
) -> RunList:
    """Runs newest first, queued ones included (by submit time; a stored run by when its first
    step started). 400 for a cursor this API did not give out."""
    page = runs_view.list_runs(
        api.store,
        api.redis,
        broker=api.broker,
        agent=agent,
        status=status,
        session_id=session_id,
        cursor=cursor,
        limit=limit,
        queued_ttl_s=api.settings.limits.queued_ttl_s,
        tenant=who.tenant,
    )
    return RunList(items=[RunItem.of(run) for run in page.items], next_cursor=page.next_cursor)


@router.post(
    "",
    status_code=202,
    responses=problems.responses(413, 422, 503),
    summary="Submit a run",
)
def create_run(
    body: RunCreate,
    response: Response,
    api: State,
    who: Submitter,
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
        tenant=who.tenant,
        celery=api.celery,
    )
    if result.id != run_id:
        response.headers["Idempotent-Replayed"] = "true"
    links = _links(result.id)
    response.headers["Location"] = links.self
    return RunAccepted(id=result.id, links=links)


@router.get(
    "/{run_id}",
    response_model=RunView,
    responses=problems.responses(404, 503),
    summary="Read a run",
)
def read_run(run_id: str, api: State, who: Reader) -> RunView | JSONResponse:
    """The run: its status, steps (tool calls with arguments and results, tokens, latency,
    worker, replica) and answer or error. A run submitted whose first step is not stored yet
    is ``queued`` (``running`` while a worker holds it)."""
    try:
        detail = runs_view.run_detail(
            api.store, api.redis, run_id, broker=api.broker, tenant=who.tenant
        )
    except TenantAccessError:
        detail = None  # another tenant's run: not this caller's to know of
    return _not_found(run_id) if detail is None else RunView.of_detail(detail)


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
)
async def run_events(
    run_id: str,
    api: State,
    who: Reader,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", description="Resume after this event (its `id:`)."),
    ] = None,
) -> Any:
    """The run's events until its end (see the 200 response)."""

    async def load_run() -> RunState | None:
        state = await run_in_threadpool(api.store.load_run, run_id)
        return None if state is None or state.tenant != who.tenant else state

    waiting = await run_in_threadpool(queued.find, api.broker, run_id)  # not started yet
    if waiting is not None and waiting.tenant != who.tenant:
        waiting = None  # another tenant's run: not this caller's to know of
    # The stream is kept under its run's tenant: another tenant's key holds nothing.
    relayed = bool(await api.aredis.exists(stream_key(who.tenant, run_id))) or (
        waiting is not None and waiting.stream
    )
    try:
        resume = resume_point(last_event_id, relayed)
    except BadEventIdError as exc:
        return problems.response(problems.problem(problems.BAD_REQUEST, str(exc)))
    if not relayed and waiting is None and await load_run() is None:
        return _not_found(run_id)
    if await saw_the_end(api.aredis, who.tenant, run_id, resume, relayed):
        return Response(status_code=204)  # the SSE spec's "stop reconnecting"
    if relayed:
        source = relayed_events(api.aredis, who.tenant, run_id, resume, load_run)
    else:
        source = stored_events(load_run, resume, api.settings.api.poll_interval_s)
    return EventSourceResponse(
        source,
        ping=api.settings.api.keepalive_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{run_id}/replay",
    status_code=202,
    response_model=RunReplayed,
    responses=problems.responses(404, 409, 503),
    summary="Replay a dead-lettered run",
)
def replay_run(run_id: str, api: State, who: Operator) -> RunReplayed | JSONResponse:
    """Send a dead-lettered run back to its queue (as ``agentq dlq replay``); it resumes at
    the step that failed. 409 when the run is not dead-lettered."""
    try:
        runs_view.run_detail(api.store, api.redis, run_id, tenant=who.tenant)
    except TenantAccessError:
        return _not_found(run_id)  # another tenant's run: not this caller's to know of
    registry = context_of(api.celery).registry
    letter = dead_letters.replay(api.celery, registry, api.store, api.redis, run_id)
    return RunReplayed(id=run_id, step=letter.step, links=_links(run_id))


SIGNAL_BODY = {
    "required": False,
    "content": {"application/json": {"schema": SignalCreate.model_json_schema()}},
}


@router.post(
    "/{run_id}/signals/{name}",
    response_model=SignalSent,
    responses=problems.responses(400, 404, 409, 413, 503),
    openapi_extra={"requestBody": SIGNAL_BODY},
    summary="Signal a waiting run",
)
async def signal_run(
    run_id: str,
    name: Annotated[str, Path(min_length=1, description="The signal's name.")],
    request: Request,
    api: State,
    who: Submitter,
) -> SignalSent | JSONResponse:
    """Send the signal ``name`` to a run parked by ``wait_for_signal`` on that name (as
    ``agentq signal``): it resumes once, with ``data`` as the call's result. The same signal
    sent again answers ``resumed: false`` and resumes nothing. 409 ``run-ended`` or
    ``not-waiting``, 413 for data over ``orchestration.signal_max_bytes``, 400 for a body that
    is not ``{"data": ...}``."""
    raw = await request.body()
    try:
        body = SignalCreate.model_validate_json(raw) if raw.strip() else SignalCreate()
        sent = await run_in_threadpool(
            control.signal, run_id, name, body.data, tenant=who.tenant, celery=api.celery
        )
    except (ValidationError, InvalidInputError) as exc:
        detail = f'the body must be a JSON object {{"data": <any JSON value>}}: {exc}'
        return problems.response(problems.problem(problems.BAD_REQUEST, detail))
    return SignalSent(run_id=sent.run_id, name=sent.name, resumed=sent.resumed)


@router.post(
    "/{run_id}/cancel",
    response_model=CancelDone,
    responses=problems.responses(404, 503),
    summary="Cancel a run",
)
def cancel_run(run_id: str, api: State, who: Submitter) -> CancelDone:
    """Cancel the run and its sub-agent runs (as ``agentq cancel``): a waiting or queued run
    ends ``cancelled`` now, a running one stops at its next step (its model call in flight is
    aborted). A run that has ended is left as it is: ``cancelled: false``."""
    done = control.cancel(run_id, tenant=who.tenant, celery=api.celery)
    was = "queued" if done.was is None else done.was.value
    return CancelDone(run_id=done.run_id, was=was, cancelled=done.cancelled)  # type: ignore[arg-type]
