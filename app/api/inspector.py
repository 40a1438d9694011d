"""The run inspector: server-rendered pages of the API app for operators.

``/inspector`` lists runs (newest first; filters agent and status) and each agent type's
queue; ``/inspector/runs/{id}`` shows a run's steps (the model's reply, each tool call with its
arguments and result, tokens, latency, worker and replica), the error and traceback of a
failed run, its parent and sub-agent runs (links, a tree) and what a parked run waits for, a
running run's tokens as they arrive (a few lines of inline JS on the run's events), and a
button that replays a dead-lettered run. Jinja2 templates beside this module,
inline CSS: no build step, nothing fetched from elsewhere.

The pages sit behind the API's keys: ``/inspector/login`` takes a key and keeps it in cookie
``agentq_key`` (HttpOnly, ``SameSite=Strict``, Secure over https), which the run API reads too
(the live tokens' EventSource sends it). Pages need scope read, a replay operate; with
``api.auth: none`` nobody logs in. Form posts are not forgeable cross-site: the cookie is
``SameSite=Strict`` (a browser sends it on no request another site starts) and a post whose
``Origin`` (or, without one, ``Referer``) is not this host is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from app.api.auth import COOKIE, Caller, authenticate, limit, require
from app.api.state import ApiState, api_state
from app.celery_ext.context import context_of
from app.errors import NotDeadLetteredError, QuarantinedMessageError, TenantAccessError
from app.ops import runs as runs_view
from app.ops.queues import queue_stats
from app.ops.runs import RunStatusName
from app.tasks import dead_letters

router = APIRouter(prefix="/inspector", include_in_schema=False)

State = Annotated[ApiState, Depends(api_state)]

RUNS_SHOWN = 100
LETTERS_SHOWN = 20


def _pretty(value: Any) -> str:
    """A JSON value as the pages show it: text as it is, anything else indented JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _when(value: datetime | float | None) -> str:
    """A timestamp in UTC to the second (a float: Unix time)."""
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
templates.env.filters["pretty"] = _pretty
templates.env.filters["when"] = _when


class PageRefusedError(Exception):
    """Raised when a page's caller has no valid key (401: to the login page) or lacks the
    page's scope (403)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def viewer(scope: str) -> Callable[[Request, ApiState], Caller]:
    """A dependency: the caller of a page, by the key in its cookie, with ``scope``."""
    scoped = require(scope)

    def page_caller(request: Request, api: State) -> Caller:
        try:
            who = authenticate(api, request.cookies.get(COOKIE))
            limit(api, who)
            return scoped(who)
        except HTTPException as exc:
            raise PageRefusedError(exc.status_code, str(exc.detail)) from exc

    return page_caller


_needs_read = require("read")
Reader = Annotated[Caller, Depends(viewer("read"))]
Operator = Annotated[Caller, Depends(viewer("operate"))]


def same_origin(request: Request) -> None:
    """Refuse (403) a form post whose ``Origin`` (or, without one, ``Referer``) is not this
    host: a page of another site posting to the inspector (a dependency)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or urlsplit(source).netloc != request.headers.get("host"):
        raise HTTPException(403, f"form post from {source or 'an unnamed page'} refused")


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


@router.get("", response_class=HTMLResponse)
def runs_page(
    request: Request,
    api: State,
    who: Reader,
    agent: Annotated[str | None, Query()] = None,
    status: Annotated[RunStatusName | None, Query()] = None,
    cursor: Annotated[str | None, Query()] = None,
) -> HTMLResponse:
    """Runs, newest first (queued ones included), each agent type's queue, the dead letters."""
    registry = context_of(api.celery).registry
    page = runs_view.list_runs(
        api.store,
        api.redis,
        broker=api.broker,
        agent=agent or None,
        status=status,
        cursor=cursor or None,
        limit=RUNS_SHOWN,
        queued_ttl_s=api.settings.limits.queued_ttl_s,
        tenant=who.tenant,
    )
    # Queues and dead letters are every tenant's: shown to operators only.
    operator = "operate" in who.scopes
    return _page(
        request,
        "runs.html",
        runs=page.items,
        next_cursor=page.next_cursor,
        queues=queue_stats(api.broker, registry, store=api.redis) if operator else [],
        letters=dead_letters.list_letters(api.redis, LETTERS_SHOWN) if operator else [],
        agents=registry.names,
        statuses=runs_view.STATUSES,
        agent=agent or "",
        status=status or "",
        who=who,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str, api: State, who: Reader) -> HTMLResponse:
    """One run: its steps, its answer or error and traceback; live tokens while it runs."""
    return _run_page(request, api, run_id, who)


def _run_page(
    request: Request,
    api: State,
    run_id: str,
    who: Caller,
    notice: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    try:
        detail = runs_view.run_detail(
            api.store, api.redis, run_id, broker=api.broker, tenant=who.tenant
        )
    except TenantAccessError:
        detail = None  # another tenant's run: shown as missing
    if detail is None:
        return _page(request, "missing.html", 404, run_id=run_id, who=who)
    letter = dead_letters.get(api.redis, run_id)
    return _page(
        request,
        "run.html",
        status_code,
        run=detail.stored,
        run_id=run_id,
        agent=detail.agent,
        status=detail.status,
        live=detail.status in ("queued", "running", "waiting"),
        parent_id=detail.parent_id,
        children=detail.children,
        children_truncated=detail.children_truncated,
        waiting=detail.waiting_for,
        letter=letter if letter is not None and letter.replayable else None,
        notice=notice,
        who=who,
    )


@router.post("/runs/{run_id}/replay", dependencies=[Depends(same_origin)])
def replay_form(request: Request, run_id: str, api: State, who: Operator) -> Response:
    """The replay button: send the dead-lettered run back to its queue, then show the run."""
    try:
        if runs_view.run_detail(api.store, api.redis, run_id, tenant=who.tenant) is None:
            return _page(request, "missing.html", 404, run_id=run_id, who=who)
    except TenantAccessError:
        return _page(request, "missing.html", 404, run_id=run_id, who=who)
    try:
        dead_letters.replay(
            api.celery, context_of(api.celery).registry, api.store, api.redis, run_id
        )
    except (NotDeadLetteredError, QuarantinedMessageError) as exc:
        return _run_page(request, api, run_id, who, notice=str(exc), status_code=409)
    return RedirectResponse(
        request.url_for("run_page", run_id=run_id).path + "?replayed=1", status_code=303
    )


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, api: State) -> Response:
    """The login form (with ``api.auth: none``, straight to the runs)."""
    if api.settings.api.auth == "none":
        return RedirectResponse(request.url_for("runs_page").path, status_code=303)
    return _page(request, "login.html", who=None)


@router.post("/login", dependencies=[Depends(same_origin)])
def login(request: Request, api: State, key: Annotated[str, Form()]) -> Response:
    """Check the key (it needs scope read) and keep it in the cookie; the runs page next."""
    try:
        _needs_read(authenticate(api, key.strip()))
    except HTTPException as exc:
        return _page(request, "login.html", exc.status_code, who=None, refused=exc.detail)
    response = RedirectResponse(request.url_for("runs_page").path, status_code=303)
    response.set_cookie(
        COOKIE,
        key.strip(),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout", dependencies=[Depends(same_origin)])
def logout(request: Request) -> Response:
    """Forget the key: the cookie is deleted."""
    response = RedirectResponse(request.url_for("login_page").path, status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageRefusedError)
    if exc.status == 401:
        return RedirectResponse(request.url_for("login_page").path, status_code=303)
    return _page(request, "refused.html", exc.status, who=None, detail=exc.detail)


def install(app: FastAPI) -> None:
    """Serve the inspector's pages from ``app``."""
    app.include_router(router)
    app.add_exception_handler(PageRefusedError, _refused)
