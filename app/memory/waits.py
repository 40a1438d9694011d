"""Parked runs in SQL: a run waiting on its sub-agent runs, a signal or a time is a row, not a
message. Every function here runs inside a write transaction of the session store
(``conn``) and returns the :class:`Effects` the caller carries out once it has committed:
the next step to publish of each run that resumed, the sub-agent runs to start, the runs that
ended away from their worker (their result to store), the running runs asked to cancel.

Exactly once comes from the conditional updates: a run resumes only from ``waiting`` at the
step that parked, a sub-agent run's end counts its parent's wait down only while its row is
``running``, so of two workers that race (two children ending at once, a signal sent twice,
two pollers finding one timer due) one changes the rows and the other finds nothing to do.
A publish lost after the commit (the process died) is found by recovery: the resumed run is
``running`` with no message, a child run is an accepted run that never started.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, func, insert, select, update

from app.constants import DEFAULT_TENANT
from app.memory.records import (
    ErrorType,
    FailurePolicy,
    RunStatus,
    TimeoutPolicy,
    WaitKind,
)
from app.memory.schema import accepted_runs, run_children, runs, steps, waits

# What a run that ended away from its worker says it ended with.
CANCELLED_REASON = "run cancelled"


@dataclass(frozen=True, slots=True)
class Child:
    """A sub-agent run a parked step starts: its id, the first message's arguments, and
    where its result goes (the delegate call and the task's place in it)."""

    run_id: str
    agent: str
    input: Any
    kwargs: dict[str, Any]  # its first message's keyword arguments
    call_id: str
    position: int
    on_failure: FailurePolicy = FailurePolicy.FAIL
    retries: int = 0


@dataclass(frozen=True, slots=True)
class Park:
    """What a step parks its run on (committed with the step)."""

    kind: WaitKind
    call_id: str  # the call a signal's or a timer's end answers (children: the first's)
    message: dict[str, Any]  # the next step's message arguments
    name: str | None = None  # a signal's
    due_at: datetime | None = None  # a timer's time, or the wait's timeout
    on_timeout: TimeoutPolicy = TimeoutPolicy.FAIL
    children: tuple[Child, ...] = ()


@dataclass(frozen=True, slots=True)
class Resumed:
    """A run that resumed: publish its step ``step`` with ``message``."""

    run_id: str
    agent: str
    step: int
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Ended:
    """A run that ended away from its worker: store its result, end its stream."""

    run_id: str
    tenant: str
    status: RunStatus
    reason: str
    error_type: ErrorType


@dataclass(slots=True)
class Effects:
    """What the caller does once the transaction has committed (see the module docstring)."""

    resumed: list[Resumed] = field(default_factory=list)
    started: list[Child] = field(default_factory=list)
    ended: list[Ended] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)  # running runs asked to stop

    def __bool__(self) -> bool:
        return bool(self.resumed or self.started or self.ended or self.cancel)

    def extend(self, other: Effects) -> None:
        self.resumed += other.resumed
        self.started += other.started
        self.ended += other.ended
        self.cancel += other.cancel


@dataclass(frozen=True, slots=True)
class OpenWait:
    """A parked run's open wait, as a signal or a poller reads it."""

    run_id: str
    step: int
    kind: WaitKind
    name: str | None
    call_id: str
    agent: str
    tenant: str
    due_at: datetime | None
    on_timeout: TimeoutPolicy


def park(conn: Connection, run_id: str, step: int, wait: Park, now: datetime) -> Effects:
    """Record ``wait`` for the step ``step`` of ``run_id`` (committed in this transaction, the
    run moved to ``waiting``), with its sub-agent runs, each also recorded as accepted (so
    recovery starts one whose first message is lost)."""
    conn.execute(
        insert(waits).values(
            run_id=run_id,
            step=step,
            kind=wait.kind,
            name=wait.name,
            call_id=wait.call_id,
            agent=wait.message["agent"],
            tenant=wait.message.get("tenant", DEFAULT_TENANT),
            due_at=wait.due_at,
            on_timeout=wait.on_timeout,
            pending=len(wait.children),
            message=wait.message,
            created_at=now,
        )
    )
    effects = Effects()
    for child in wait.children:
        _add_child(conn, run_id, step, child, child.retries, 1, now)
        effects.started.append(child)
    return effects


def _add_child(
    conn: Connection,
    parent_id: str,
    step: int,
    child: Child,
    retries_left: int,
    attempt: int,
    now: datetime,
) -> None:
    conn.execute(
        insert(run_children).values(
            child_id=child.run_id,
            parent_id=parent_id,
            step=step,
            call_id=child.call_id,
            position=child.position,
            agent=child.agent,
            input=child.input,
            on_failure=child.on_failure,
            retries_left=retries_left,
            status=RunStatus.RUNNING,
            attempt=attempt,
            created_at=now,
        )
    )
    conn.execute(
        insert(accepted_runs).values(
            id=child.run_id, agent=child.agent, kwargs=child.kwargs, created_at=now
        )
    )


def open_wait(conn: Connection, run_id: str) -> OpenWait | None:
    """The run's open wait, if it is parked."""
    row = conn.execute(
        select(waits).where(waits.c.run_id == run_id, waits.c.resolved_at.is_(None))
    ).first()
    return None if row is None else _open(row._mapping)


def _open(row: RowMapping) -> OpenWait:
    return OpenWait(
        row["run_id"],
        row["step"],
        row["kind"],
        row["name"],
        row["call_id"],
        row["agent"],
        row["tenant"],
        row["due_at"],
        row["on_timeout"],
    )


def delivered(conn: Connection, run_id: str, name: str) -> bool:
    """Whether a signal ``name`` resumed ``run_id`` before (a signal sent twice)."""
    query = select(func.count()).where(
        waits.c.run_id == run_id,
        waits.c.kind == WaitKind.SIGNAL,
        waits.c.name == name,
        waits.c.resolution == "signal",
    )
    return bool(conn.execute(query).scalar_one())


def resume(
    conn: Connection,
    run_id: str,
    step: int,
    results: Mapping[str, Any],
    resolution: str,
    now: datetime,
) -> Resumed | None:
    """Move a run parked at ``step`` back to running, with ``results`` (call id -> result) as
    the results of the calls that parked it; None when it is not parked there (resumed or
    ended by someone else first)."""
    moved = conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id, runs.c.status == RunStatus.WAITING, runs.c.next_step == step + 1
        )
        .values(status=RunStatus.RUNNING)
    ).rowcount
    if moved != 1:
        return None
    row = _resolve(conn, run_id, step, resolution, now)
    _fill_results(conn, run_id, step, results)
    return Resumed(run_id, row["agent"], step + 1, dict(row["message"]))


def _resolve(
    conn: Connection, run_id: str, step: int, resolution: str, now: datetime
) -> RowMapping:
    """Close the wait of ``run_id`` at ``step``; its row."""
    conn.execute(
        update(waits)
        .where(waits.c.run_id == run_id, waits.c.step == step)
        .values(resolved_at=now, due_at=None, resolution=resolution)
    )
    return (
        conn.execute(select(waits).where(waits.c.run_id == run_id, waits.c.step == step))
        .one()
        ._mapping
    )


def _fill_results(conn: Connection, run_id: str, step: int, results: Mapping[str, Any]) -> None:
    """Write ``results`` into the parked step's calls (their result was the wait)."""
    where = and_(steps.c.run_id == run_id, steps.c.step == step)
    calls = conn.execute(select(steps.c.tool_calls).where(where)).scalar_one() or []
    filled = [
        {**call, "result": results[call["id"]], "error": False}
        if call.get("id") in results
        else call
        for call in calls
    ]
    conn.execute(update(steps).where(where).values(tool_calls=filled))


def end_waiting(
    conn: Connection,
    run_id: str,
    step: int,
    status: RunStatus,
    reason: str,
    error_type: ErrorType,
    resolution: str,
    now: datetime,
) -> Effects:
    """End a run parked at ``step`` (cancelled, timed out, a child failed), with its other
    sub-agent runs cancelled and its parent told; nothing when it is not parked there."""
    moved = conn.execute(
        update(runs)
        .where(
            runs.c.id == run_id, runs.c.status == RunStatus.WAITING, runs.c.next_step == step + 1
        )
        .values(status=status, error=reason, error_type=error_type, finished_at=now)
    ).rowcount
    effects = Effects()
    if moved != 1:
        return effects
    row = _resolve(conn, run_id, step, resolution, now)
    effects.ended.append(Ended(run_id, row["tenant"], status, reason, error_type))
    effects.extend(_cancel_children(conn, run_id, now))
    effects.extend(settle_child(conn, run_id, status, None, reason, now))
    return effects


def settle_child(
    conn: Connection,
    child_id: str,
    status: RunStatus,
    answer: Any,
    error: str | None,
    now: datetime,
) -> Effects:
    """A run ended (``status``): if it is a sub-agent run its parent still waits for, record
    its end and apply its failure policy; the last child to end resumes the parent."""
    settled = conn.execute(
        update(run_children)
        .where(run_children.c.child_id == child_id, run_children.c.status == RunStatus.RUNNING)
        .values(status=status, answer=answer, error=error, ended_at=now)
    ).rowcount
    if settled != 1:
        return Effects()  # not a child, or its parent stopped waiting for it
    child = (
        conn.execute(select(run_children).where(run_children.c.child_id == child_id)).one()._mapping
    )
    parent, step = child["parent_id"], child["step"]
    spent = conn.execute(
        select(
            func.coalesce(func.sum(steps.c.tokens_in), 0),
            func.coalesce(func.sum(steps.c.tokens_out), 0),
        ).where(steps.c.run_id == child_id)
    ).one()
    conn.execute(
        update(runs)
        .where(runs.c.id == parent)
        .values(
            child_tokens_in=runs.c.child_tokens_in + spent[0],
            child_tokens_out=runs.c.child_tokens_out + spent[1],
        )
    )
    if status is not RunStatus.SUCCEEDED:
        policy = child["on_failure"]
        if policy is FailurePolicy.RETRY and child["retries_left"] > 0:
            return _retry(conn, child, now)
        if policy is not FailurePolicy.SKIP:
            reason = f"sub-agent run {child_id} ({child['agent']}) {status}: {error or 'no reason'}"
            return end_waiting(
                conn,
                parent,
                step,
                RunStatus.FAILED,
                reason,
                ErrorType.CHILD_FAILED,
                "children",
                now,
            )
    where = and_(waits.c.run_id == parent, waits.c.step == step, waits.c.resolved_at.is_(None))
    # The update locks the wait's row (PostgreSQL; SQLite has one writer): the read after it
    # sees every other child's count, so one child alone reads zero.
    conn.execute(update(waits).where(where).values(pending=waits.c.pending - 1))
    left = conn.execute(select(waits.c.pending).where(where)).scalar()
    effects = Effects()
    if left == 0:
        resumed = resume(conn, parent, step, children_results(conn, parent, step), "children", now)
        if resumed is not None:
            effects.resumed.append(resumed)
    return effects


def _retry(conn: Connection, child: RowMapping, now: datetime) -> Effects:
    """Start a failed child again as a new run, one retry fewer."""
    from app.celery_ext.envelope import new_id  # a run id holds its start time

    kwargs = conn.execute(
        select(accepted_runs.c.kwargs).where(accepted_runs.c.id == child["child_id"])
    ).scalar()
    if kwargs is None:  # its accepted record was dropped (the run started): rebuild it
        row = conn.execute(select(runs).where(runs.c.id == child["child_id"])).one()._mapping
        kwargs = {
            "agent": row["agent"],
            "input": row["input"],
            "session_id": None,
            "tenant": row["tenant"],
            "parent": {"run": row["parent_id"], "lineage": row["lineage"] or []},
        }
    again = Child(
        new_id(),
        child["agent"],
        child["input"],
        dict(kwargs),
        child["call_id"],
        child["position"],
        FailurePolicy.RETRY,
    )
    _add_child(
        conn,
        child["parent_id"],
        child["step"],
        again,
        child["retries_left"] - 1,
        child["attempt"] + 1,
        now,
    )
    return Effects(started=[again])


def children_results(conn: Connection, parent: str, step: int) -> dict[str, list[Any]]:
    """Each delegate call's result: its tasks' answers (or errors) in the order asked, the
    last attempt of each."""
    rows = conn.execute(
        select(run_children)
        .where(run_children.c.parent_id == parent, run_children.c.step == step)
        .order_by(run_children.c.call_id, run_children.c.position, run_children.c.attempt)
    ).all()
    last: dict[tuple[str, int], RowMapping] = {}
    for row in rows:
        last[(row.call_id, row.position)] = row._mapping
    results: dict[str, list[Any]] = {}
    for (call_id, _), child in sorted(last.items(), key=lambda item: item[0]):
        entry: dict[str, Any] = {"agent": child["agent"], "run_id": child["child_id"]}
        if child["status"] is RunStatus.SUCCEEDED:
            entry["answer"] = child["answer"]
        else:
            entry["error"] = child["error"] or str(child["status"])
            entry["status"] = str(child["status"])
        results.setdefault(call_id, []).append(entry)
    return results


def cancel(
    conn: Connection,
    run_id: str,
    now: datetime,
    reason: str = CANCELLED_REASON,
    *,
    settle: bool = True,
) -> tuple[RunStatus | None, Effects]:
    """Cancel ``run_id`` and its sub-agent runs: a parked run ends now, a running one is asked
    to stop at its next step; its status before (None: no such run) and what to carry out.
    ``settle``: tell its parent (not when the parent is the one cancelling)."""
    row = conn.execute(
        select(runs.c.status, runs.c.next_step, runs.c.tenant).where(runs.c.id == run_id)
    ).first()
    if row is None:
        return None, Effects()
    status = row.status
    effects = Effects()
    if status is RunStatus.WAITING:
        moved = conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.status == RunStatus.WAITING)
            .values(
                status=RunStatus.CANCELLED,
                error=reason,
                error_type=ErrorType.CANCELLED,
                finished_at=now,
            )
        ).rowcount
        if moved == 1:
            _resolve(conn, run_id, row.next_step - 1, "cancelled", now)
            effects.ended.append(
                Ended(run_id, row.tenant, RunStatus.CANCELLED, reason, ErrorType.CANCELLED)
            )
            effects.extend(_cancel_children(conn, run_id, now))
            if settle:
                effects.extend(settle_child(conn, run_id, RunStatus.CANCELLED, None, reason, now))
    elif status is RunStatus.RUNNING:
        conn.execute(
            update(runs)
            .where(runs.c.id == run_id, runs.c.cancel_requested_at.is_(None))
            .values(cancel_requested_at=now)
        )
        effects.cancel.append(run_id)
        effects.extend(_cancel_children(conn, run_id, now))
    return status, effects


def _cancel_children(conn: Connection, parent: str, now: datetime) -> Effects:
    """Cancel the sub-agent runs ``parent`` still waits for: marked cancelled (their end no
    longer counts), each cancelled in turn; one that has not started is stored cancelled, so
    its first message finds it ended."""
    rows = conn.execute(
        select(run_children.c.child_id, run_children.c.agent, run_children.c.input).where(
            run_children.c.parent_id == parent, run_children.c.status == RunStatus.RUNNING
        )
    ).all()
    effects = Effects()
    if not rows:
        return effects
    conn.execute(
        update(run_children)
        .where(run_children.c.parent_id == parent, run_children.c.status == RunStatus.RUNNING)
        .values(status=RunStatus.CANCELLED, error=CANCELLED_REASON, ended_at=now)
    )
    parent_row = conn.execute(
        select(runs.c.tenant, runs.c.lineage, runs.c.agent).where(runs.c.id == parent)
    ).one()
    for child in rows:
        status, more = cancel(conn, child.child_id, now, settle=False)
        effects.extend(more)
        if status is None:  # not started: stored ended, its first message finds it so
            conn.execute(
                insert(runs).values(
                    id=child.child_id,
                    agent=child.agent,
                    input=child.input,
                    status=RunStatus.CANCELLED,
                    next_step=0,
                    created_at=now,
                    finished_at=now,
                    error=CANCELLED_REASON,
                    error_type=ErrorType.CANCELLED,
                    tenant=parent_row.tenant,
                    parent_id=parent,
                    lineage=[*(parent_row.lineage or []), parent_row.agent],
                )
            )
            effects.ended.append(
                Ended(
                    child.child_id,
                    parent_row.tenant,
                    RunStatus.CANCELLED,
                    CANCELLED_REASON,
                    ErrorType.CANCELLED,
                )
            )
            # Its first step may be under way unstored (a first delivery commits at its end):
            # told too, so a model call it is making is aborted.
            effects.cancel.append(child.child_id)
    return effects


def due(conn: Connection, now: datetime, agents: list[str] | None, limit: int) -> list[OpenWait]:
    """Open waits whose time has come (a timer, a timeout), earliest first; of ``agents``'
    runs only when given."""
    query = select(waits).where(waits.c.due_at <= now)
    if agents is not None:
        query = query.where(waits.c.agent.in_(agents))
    rows = conn.execute(query.order_by(waits.c.due_at).limit(limit)).all()
    return [_open(row._mapping) for row in rows]


def due_by_agent(conn: Connection, now: datetime) -> dict[str, int]:
    """How many open waits are due, by agent type: work for a worker (the backlog)."""
    rows = conn.execute(
        select(waits.c.agent, func.count()).where(waits.c.due_at <= now).group_by(waits.c.agent)
    ).all()
    return {agent: int(n) for agent, n in rows}


def fire(conn: Connection, wait: OpenWait, now: datetime) -> Effects:
    """End a due wait: a timer resumes its run; a timeout resumes it with the calls' results
    saying so (``continue``) or ends it as ``wait_timed_out`` (``fail``)."""
    effects = Effects()
    if wait.kind is WaitKind.TIMER:
        resumed = resume(
            conn, wait.run_id, wait.step, {wait.call_id: {"slept": True}}, "timer", now
        )
        if resumed is not None:
            effects.resumed.append(resumed)
        return effects
    what = f"signal {wait.name!r}" if wait.kind is WaitKind.SIGNAL else "its sub-agent runs"
    if wait.on_timeout is TimeoutPolicy.FAIL:
        return end_waiting(
            conn,
            wait.run_id,
            wait.step,
            RunStatus.FAILED,
            f"timed out waiting for {what}",
            ErrorType.WAIT_TIMED_OUT,
            "timeout",
            now,
        )
    if wait.kind is WaitKind.SIGNAL:
        results: dict[str, Any] = {wait.call_id: {"signal": wait.name, "timed_out": True}}
    else:
        effects.extend(_cancel_children(conn, wait.run_id, now))
        results = dict(children_results(conn, wait.run_id, wait.step))
    resumed = resume(conn, wait.run_id, wait.step, results, "timeout", now)
    if resumed is not None:
        effects.resumed.append(resumed)
    return effects


def due_at(now: datetime, seconds: float | None) -> datetime | None:
    """``seconds`` from ``now`` (None: never)."""
    return None if seconds is None else now + timedelta(seconds=seconds)


def cancel_queued(
    conn: Connection,
    run_id: str,
    agent: str,
    input: Any,
    tenant: str,
    now: datetime,
    reason: str = CANCELLED_REASON,
) -> Effects:
    """Store a run that has not started as cancelled (its first message then finds it ended);
    nothing when it has started meanwhile (the caller cancels it as a stored run)."""
    stmt = insert(runs).values(
        id=run_id,
        agent=agent,
        input=input,
        status=RunStatus.CANCELLED,
        next_step=0,
        created_at=now,
        finished_at=now,
        error=reason,
        error_type=ErrorType.CANCELLED,
        tenant=tenant,
    )
    exists = conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first()
    if exists is not None:
        return Effects()
    conn.execute(stmt)
    ended = Ended(run_id, tenant, RunStatus.CANCELLED, reason, ErrorType.CANCELLED)
    return Effects(ended=[ended], cancel=[run_id])  # its first step may be under way
