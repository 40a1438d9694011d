"""Runs as callers and operators read them: the listing (queued runs from the index merged with
stored runs, newest first, cursor-paginated) and one run's detail.

Shared by the HTTP API, ``agentq runs`` and the run inspector; no web framework here.

A queued run is one the index (:mod:`app.celery_ext.queued`) has and the store has not; it is
``running`` while a worker holds its lease (a first step without tool calls runs without one,
so it may read ``queued`` until it commits). Its time is its submit time; a stored run's is
when its first step started. Entries whose run the store has are dropped as they are met, and
entries older than ``limits.queued_ttl_s`` when an agent's index is read.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from app.celery_ext import queued
from app.celery_ext.queued import QueuedRun
from app.constants import DEFAULT_TENANT, lease_key, stream_key
from app.errors import BadCursorError, TenantAccessError
from app.memory.records import RunRecord, RunState, RunStatus
from app.memory.run_tree import ChildRun, WaitInfo, family
from app.memory.sessions import SessionStore

RunStatusName = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(RunStatusName)
"""Every status a run can be listed with."""

_CHUNK = 100  # index entries checked against the store and the leases per round trip


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as the listing shows it."""

    id: str
    agent: str
    status: RunStatusName
    created_at: datetime  # queued: when submitted; stored: when its first step started
    session_id: str | None = None
    steps: int = 0  # committed
    finished_at: datetime | None = None
    error_type: str | None = None

    @property
    def mark(self) -> tuple[int, str]:
        """Its place in the listing's order (time in us, id), newest first."""
        return queued.us_of(self.created_at), self.id


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of the listing; ``next_cursor`` (None on the last page) asks for the next."""

    items: list[RunSummary]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RunDetail:
    """One run: ``stored`` holds its steps (tool calls, tokens, latency, worker, replica),
    answer or error and traceback once its first step is stored; before that only the
    index's fields are known (``submitted_at``)."""

    id: str
    agent: str
    status: RunStatusName
    session_id: str | None = None
    stream: bool | None = None  # known while queued, or while its token stream is kept
    submitted_at: datetime | None = None
    stored: RunState | None = None
    tenant: str = DEFAULT_TENANT
    parent_id: str | None = None  # a sub-agent run: the run that delegated to it
    children: tuple[ChildRun, ...] = ()  # its sub-agent runs, each with its own
    waiting_for: WaitInfo | None = None  # a parked run's open wait
    children_truncated: bool = False  # the tree was too large to read whole


def encode_cursor(mark: tuple[int, str]) -> str:
    """The opaque cursor of the page after ``mark`` (time in us, run id)."""
    text = json.dumps({"t": mark[0], "id": mark[1]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The mark a cursor of :func:`encode_cursor` holds; BadCursorError for anything else."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, run_id = data["t"], data["id"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        at = run_id = None
    if type(at) is not int or not isinstance(run_id, str):
        raise BadCursorError(
            f"cursor {cursor[:80]!r} is not one a run listing gave out: pass `next_cursor` "
            "from the previous page as it is, or leave it out for the first page"
        )
    return at, run_id


def list_runs(
    store: SessionStore,
    redis: Any,
    *,
    broker: Any = None,
    agent: str | None = None,
    status: str | None = None,
    session_id: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
    queued_ttl_s: int = 7 * 86_400,
    tenant: str | None = None,
) -> RunPage:
    """Runs newest first, queued ones included: ``limit`` of them after ``cursor``, of one
    ``agent``, ``status`` (:data:`STATUSES`), ``session_id`` and ``tenant`` when given (the
    API and CLI always give the caller's tenant).

    ``redis`` holds the leases, ``broker`` (default: ``redis``) the queued-runs index."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    below = None if cursor is None else decode_cursor(cursor)
    index = redis if broker is None else broker
    found: dict[str, RunSummary] = {}
    if status in (None, "queued", "running"):  # the statuses an unstored run can have
        for run in _queued_runs(
            store, redis, index, agent, status, session_id, below, limit + 1, queued_ttl_s,
            tenant,
        ):  # fmt: skip
            found[run.id] = run
    if status != "queued":
        before = None if below is None else (queued.datetime_of(below[0]), below[1])
        stored = store.list_runs(
            agent, status, limit + 1, session_id=session_id, before=before, tenant=tenant
        )
        found.update((record.id, _summary(record)) for record in stored)  # stored wins
    ordered = sorted(found.values(), key=lambda run: run.mark, reverse=True)
    items = ordered[:limit]
    more = len(ordered) > limit
    return RunPage(items, encode_cursor(items[-1].mark) if more else None)


def run_detail(
    store: SessionStore,
    redis: Any,
    run_id: str,
    *,
    broker: Any = None,
    tenant: str | None = None,
) -> RunDetail | None:
    """The run ``run_id`` (queued, running or stored), or None when neither the store nor
    the queued-runs index has it; a stored run with its parent, its sub-agent runs (a tree)
    and, parked, what it waits for. With ``tenant``, a run of another tenant raises
    :class:`TenantAccessError`."""
    stored = store.load_run(run_id)
    if stored is not None:
        check_tenant_of("run", run_id, stored.tenant, tenant)
        streamed = True if redis.exists(stream_key(stored.tenant, run_id)) else None
        parked = stored.status is RunStatus.WAITING
        kin = store.read(lambda conn: family(conn, run_id, parked))
        return RunDetail(
            stored.id,
            stored.agent,
            stored.status.value,
            stored.session_id,
            streamed,
            stored=stored,
            tenant=stored.tenant,
            parent_id=stored.parent_id,
            children=kin.children,
            waiting_for=kin.waiting_for,
            children_truncated=kin.truncated,
        )
    index = redis if broker is None else broker
    entry = queued.find(index, run_id)
    if entry is None:
        return None
    check_tenant_of("run", run_id, entry.tenant, tenant)
    if store.stored_ids([run_id]):  # its first step committed since the load above
        return run_detail(store, redis, run_id, broker=broker, tenant=tenant)
    running = bool(redis.exists(lease_key(run_id)))
    return RunDetail(
        entry.id,
        entry.agent,
        "running" if running else "queued",
        entry.session_id,
        entry.stream,
        entry.submitted_at,
        tenant=entry.tenant,
    )


def check_tenant_of(kind: str, name: str, owner: str, tenant: str | None) -> None:
    """Raise :class:`TenantAccessError` when ``tenant`` (None: any) is not ``owner``, the
    tenant of the ``kind`` (run, session, memory) ``name``."""
    if tenant is not None and owner != tenant:
        raise TenantAccessError(f"{kind} {name!r} is not tenant {tenant!r}'s")


def _summary(record: RunRecord) -> RunSummary:
    return RunSummary(
        record.id,
        record.agent,
        record.status.value,
        record.created_at,
        record.session_id,
        record.next_step,
        record.finished_at,
        record.error_type.value if record.error_type else None,
    )


def _queued_runs(
    store: SessionStore,
    redis: Any,
    index: Any,
    agent: str | None,
    status: str | None,
    session_id: str | None,
    below: tuple[int, str] | None,
    want: int,
    ttl_s: int,
    tenant: str | None = None,
) -> Iterator[RunSummary]:
    """Up to ``want`` indexed runs before ``below``, newest first, that match the filters and
    are not stored; entries of stored runs are dropped from the index on the way."""
    agents = [agent] if agent is not None else queued.agents(index)
    for name in agents:
        queued.prune(index, name, ttl_s)
    marks = heapq.merge(
        *(
            ((at, run_id, name) for at, run_id in queued.newest(index, name, below))
            for name in agents
        ),
        reverse=True,
    )
    given = 0
    while given < want:
        chunk = list(itertools.islice(marks, _CHUNK))
        if not chunk:
            return
        runs = queued.runs_of(index, chunk)
        stored = store.stored_ids([run.id for run in runs])
        if stored:
            _forget(index, [run for run in runs if run.id in stored])
        live = [run for run in runs if run.id not in stored]
        with redis.pipeline(transaction=False) as pipe:
            for run in live:
                pipe.exists(lease_key(run.id))
            leased = pipe.execute()
        for run, held in zip(live, leased, strict=True):
            run_status: RunStatusName = "running" if held else "queued"
            if status not in (None, run_status):
                continue
            if session_id is not None and run.session_id != session_id:
                continue
            if tenant is not None and run.tenant != tenant:
                continue
            yield RunSummary(run.id, run.agent, run_status, run.submitted_at, run.session_id)
            given += 1
            if given >= want:
                return


def _forget(index: Any, runs: list[QueuedRun]) -> None:
    """Drop the entries of runs the store has (their worker's removal did not happen)."""
    with index.pipeline(transaction=False) as pipe:
        for run in runs:
            queued.forget(pipe, run.agent, [run.id])
        pipe.execute()
