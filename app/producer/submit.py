"""Producers: validate a run at the edge, then enqueue it. Nothing invalid reaches a queue."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, overload

from celery import Celery

from app.agents.validation import RunRequest, validate_run
from app.celery_ext import envelope as messages
from app.celery_ext import queued
from app.celery_ext.context import context_of
from app.celery_ext.envelope import compact_json, message_headers, new_id, new_ids
from app.celery_ext.queued import time_of
from app.constants import DEFAULT_TENANT, TASK_RUN_AGENT, idempotency_key
from app.errors import IdempotencyConflictError, InvalidInputError
from app.memory.recovery import forget_accepted, record_accepted
from app.ops import tracing
from app.ops.masking import task_kwargsrepr
from app.producer.results import RunResult

log = logging.getLogger(__name__)

RUN_FIELDS = frozenset(
    {"agent", "input", "session_id", "run_id", "stream", "budget", "idempotency_key", "tenant"}
)


def _default_celery(celery: Celery | None) -> Celery:
    if celery is not None:
        return celery
    from app.celery_app import get_celery

    return get_celery()


def _digest(req: RunRequest) -> str:
    fields = [req.agent, req.input, req.session_id, req.budget, req.tenant]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _claim(celery: Celery, req: RunRequest, key: Any) -> str | None:
    """Reserve idempotency ``key`` for ``req``; the run id it already names, if any.

    SET NX makes concurrent submits with one key agree on one run. A key reused for a
    different run (other agent, input, session or budget) is refused.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > 256:
        raise InvalidInputError(f"'idempotency_key' must be a string of 1-256 chars, got {key!r}")
    name = idempotency_key(req.tenant, req.agent, key)
    value = json.dumps({"run_id": req.run_id, "digest": _digest(req)})
    context = context_of(celery)
    window = context.settings.limits.idempotency_window_s
    client = context.redis
    if client.set(name, value, nx=True, ex=window):
        return None
    raw = client.get(name)
    if raw is None:  # expired between the two calls: claim it again
        return _claim(celery, req, key)
    held = json.loads(raw)
    if held["digest"] != _digest(req):
        raise IdempotencyConflictError(
            f"idempotency key {key!r} of agent {req.agent!r} was used for run "
            f"{held['run_id']} with different fields; use a new key for a new run"
        )
    return str(held["run_id"])


def _submit_span(celery: Celery, req: RunRequest) -> AbstractContextManager[Any]:
    """The ``agentq.submit`` span of one run; its context goes into the message headers."""
    tracing.setup(context_of(celery).settings.tracing)  # once per process, on the first submit
    return tracing.span(
        "agentq.submit", None, "producer", agent=req.agent, run_id=req.run_id, queue=req.queue
    )


def _release(celery: Celery, req: RunRequest, key: str | None) -> None:
    # The run was not enqueued after all: let a retry of this submit claim the key anew.
    if key is not None:
        context_of(celery).redis.delete(idempotency_key(req.tenant, req.agent, key))


def submit(
    agent: str,
    input: Any,
    session_id: str | None = None,
    *,
    run_id: str | None = None,
    stream: bool = False,
    budget: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
    tenant: str | None = None,
    celery: Celery | None = None,
) -> RunResult:
    """Validate and enqueue one run; ``.get()`` on the result waits for its answer.

    With ``stream=True`` the worker relays the model's tokens as they come:
    ``for token in result.stream(): ...`` (or ``async for token in result.astream()``).
    ``budget`` tightens the agent type's limits for this run (app.agents.guardrails.Budget).
    With ``idempotency_key``, a repeated submit within ``limits.idempotency_window_s``
    returns the run the first one created instead of enqueueing another.
    ``tenant``: whose run it is (None: the default tenant); its session, if any, must be
    that tenant's.
    """
    celery = _default_celery(celery)
    context = context_of(celery)
    req = validate_run(
        context.registry, context.settings, agent, input, session_id, run_id, stream, budget,
        tenant=tenant,
    )  # fmt: skip
    task = celery.tasks[TASK_RUN_AGENT]
    existing = _claim(celery, req, idempotency_key)
    if existing is not None:
        return task.AsyncResult(existing, tenant=req.tenant)  # type: ignore[no-any-return]
    recorded = _record_accepted(celery, [req])
    try:
        with _submit_span(celery, req):
            result: RunResult = task.apply_async(
                kwargs=req.kwargs(),
                task_id=req.run_id,
                queue=req.queue,
                headers=message_headers(new_run=True),
                ignore_result=True,  # the worker stores the run's result itself
            )
            result.tenant = req.tenant
            return result
    except BaseException:
        _release(celery, req, idempotency_key)
        forget_accepted_runs(celery, recorded)
        raise


def _record_accepted(celery: Celery, requests: list[RunRequest]) -> list[str]:
    """:func:`record_accepted_runs` of validated ``requests``."""
    return record_accepted_runs(celery, [(r.run_id, r.agent, r.kwargs()) for r in requests])


def record_accepted_runs(
    celery: Celery, runs: list[tuple[str, str, Mapping[str, Any]]]
) -> list[str]:
    """Record ``runs`` ((run id, agent, first message's keyword arguments) each) as accepted
    in the session store before they are pushed (``durability.accepted = "sql"``: a run Redis
    loses is published again by recovery); the ids recorded."""
    context = context_of(celery)
    if context.settings.durability.accepted != "sql" or not runs:
        return []
    record_accepted(context.store, runs)
    return [run_id for run_id, _, _ in runs]


def forget_accepted_runs(celery: Celery, run_ids: list[str]) -> None:
    """The runs ``run_ids`` were not pushed after all: drop their records (best effort: a
    record left behind makes recovery start a run the caller was told failed)."""
    if not run_ids:
        return
    try:
        forget_accepted(context_of(celery).store, run_ids)
    except Exception:
        log.exception(
            "%d run(s) recorded as accepted were not enqueued; their records stay", len(run_ids)
        )


class RunResults(Sequence[RunResult]):
    """The handles of runs submitted together, in submit order (what :func:`submit_many`
    returns). A list of run ids that makes each :class:`RunResult` when it is first read:
    building tens of thousands of handles nobody reads would cost more than enqueueing."""

    def __init__(self, task: Any, run_ids: list[str], tenants: list[str] | None = None) -> None:
        self._task = task
        self.ids = run_ids
        self._tenants = tenants
        self._handles: list[RunResult | None] = [None] * len(run_ids)

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> RunResult: ...

    @overload
    def __getitem__(self, index: slice) -> list[RunResult]: ...

    def __getitem__(self, index: int | slice) -> RunResult | list[RunResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        handle = self._handles[index]
        if handle is None:
            tenant = DEFAULT_TENANT if self._tenants is None else self._tenants[index]
            handle = self._handles[index] = self._task.AsyncResult(self.ids[index], tenant=tenant)
        return handle

    def __repr__(self) -> str:
        return f"<RunResults of {len(self)} runs>"


def submit_many(
    runs: Iterable[Mapping[str, Any]],
    *,
    celery: Celery | None = None,
    batch_size: int = 1000,
) -> RunResults:
    """Validate every run first, then enqueue all of them through pipelined Redis writes
    (``batch_size`` messages per round trip).

    Each item is a mapping with ``agent``, ``input`` and optionally ``session_id``,
    ``run_id``, ``stream``, ``budget``, ``idempotency_key`` and ``tenant`` (as for
    :func:`submit`).
    If any item is invalid, nothing is enqueued. The result is a sequence of
    :class:`RunResult`, one per item in order (``.ids`` lists the run ids).
    """
    celery = _default_celery(celery)
    context = context_of(celery)
    registry, settings = context.registry, context.settings
    requests: list[RunRequest] = []
    keys: dict[int, Any] = {}  # index -> idempotency key, for the runs that have one
    given: set[str] = set()  # run ids the caller chose (ours hold their submit time)
    ids = new_ids()
    for i, item in enumerate(runs):
        if type(item) is not dict and not isinstance(item, Mapping):
            raise InvalidInputError(f"run #{i} must be a mapping, got {type(item).__name__}")
        if not RUN_FIELDS.issuperset(item):
            unknown = set(item) - RUN_FIELDS
            raise InvalidInputError(f"run #{i} has unknown fields: {sorted(unknown)}")
        get = item.get
        run_id = get("run_id")
        req = validate_run(
            registry,
            settings,
            get("agent"),
            get("input"),
            get("session_id"),
            run_id or next(ids),
            get("stream", False),
            get("budget"),
            tenant=get("tenant"),
        )
        if run_id:
            given.add(req.run_id)
        key = get("idempotency_key")
        if key is not None:
            keys[i] = key
        requests.append(req)
    run_ids = [req.run_id for req in requests]
    fresh = requests if not keys else []
    claimed: list[tuple[int, int]] = []  # (place in fresh, index) of runs whose key we took
    pushed = _Pushed()
    recorded: list[str] = []
    try:
        if keys:
            for i, req in enumerate(requests):
                existing = _claim(celery, req, keys.get(i))
                if existing is not None:
                    run_ids[i] = existing
                    continue
                if i in keys:
                    claimed.append((len(fresh), i))
                fresh.append(req)
        recorded = _record_accepted(celery, fresh)
        _push(celery, fresh, batch_size, pushed, given)
    except BaseException:
        forget_accepted_runs(celery, recorded[pushed.runs :])
        # Runs of the batches Redis executed are enqueued: their keys stay, so a retry of
        # this call names them instead of enqueueing them twice. The others' keys go.
        for place, i in claimed:
            if place >= pushed.runs:
                _release(celery, requests[i], keys[i])
        raise
    tenants = [r.tenant for r in requests]
    named = any(t != DEFAULT_TENANT for t in tenants)
    return RunResults(celery.tasks[TASK_RUN_AGENT], run_ids, tenants if named else None)


class _Pushed:
    """How many of the runs given to :func:`_push` are in Redis (their batch executed)."""

    runs = 0


def _push(
    celery: Celery, requests: list[RunRequest], batch_size: int, pushed: _Pushed, given: set[str]
) -> None:
    """LPUSH the runs' first messages into their queues, ``batch_size`` per round trip, each
    batch one MULTI/EXEC with one LPUSH per queue (a worker takes a queue's messages in
    submit order) and the runs' entries in the queued-runs index (``given``: the run ids the
    caller chose). ``pushed`` counts the runs of the batches executed."""
    context = context_of(celery)
    ttl = context.settings.limits.queued_ttl_s
    with context.broker.pipeline(transaction=True) as pipe:
        for batch in _batches(celery, requests, batch_size, given):
            for queue, queued_messages in batch.messages.items():
                pipe.lpush(queue, *queued_messages)
            queued.add(pipe, batch.runs, batch.entries, ttl)
            pipe.execute()
            pushed.runs += sum(map(len, batch.messages.values()))


@dataclass(slots=True)
class _Batch:
    """One round trip's runs: their first messages by queue, and their index entries."""

    messages: dict[str, list[str]] = field(default_factory=dict)
    runs: dict[str, list[str]] = field(default_factory=dict)  # agent -> run ids
    entries: dict[str, str] = field(default_factory=dict)  # run id -> queued.entry, if any


def _batches(
    celery: Celery, requests: list[RunRequest], batch_size: int, given: set[str]
) -> Iterator[_Batch]:
    """The runs' first messages (built by :mod:`app.celery_ext.envelope`, as apply_async would)
    and index entries, ``batch_size`` runs at a time.

    Without tracing every message of the call carries the same headers (one enqueue time:
    they reach Redis together); with it, each run has its own submit span and context.
    A run's id holds its submit time (a UUIDv7); one the caller gave (in ``given``) that does
    not is indexed with a time a microsecond apart from the call's start, in submit order."""
    reply_to, origin = messages.reply_to_of(celery), messages.process_origin()
    tags = f"{new_id()}."  # + the run's index: unique, and cheaper than a UUID each
    traced = tracing.enabled()
    shared = compact_json(message_headers(new_run=True))
    envelopes: dict[str, messages.Envelope] = {}  # by agent (each has one queue)
    at = queued.now_us()
    for start in range(0, len(requests), batch_size):
        batch = _Batch()
        for i, req in enumerate(requests[start : start + batch_size], start):
            agent = req.agent
            envelope = envelopes.get(agent)
            if envelope is None:
                envelope = envelopes[agent] = messages.envelope(
                    req.queue, reply_to, origin, shadow=agent
                )
            kwargs_json, kwargsrepr = req.kwargs_json(), task_kwargsrepr(req.kwargs())
            if traced:
                with _submit_span(celery, req):
                    headers = compact_json(message_headers(new_run=True))
            else:
                headers = shared
            message = messages.fill(
                envelope, req.run_id, kwargs_json, kwargsrepr, headers, f"{tags}{i}"
            )
            batch.messages.setdefault(req.queue, []).append(message)
            run_id = req.run_id
            if (
                req.session_id is not None
                or req.stream
                or run_id in given
                or req.tenant != DEFAULT_TENANT
            ):
                at_us = at + i if time_of(run_id) is None else None
                text = queued.entry(agent, req.session_id, req.stream, at_us, req.tenant)
                if text is not None:  # a session, stream or submit time to keep
                    batch.entries[run_id] = text
            ids = batch.runs.get(agent)
            if ids is None:
                ids = batch.runs[agent] = []
            ids.append(run_id)
        yield batch
