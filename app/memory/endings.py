"""How a parked run's wait ends other than by a signal: its sub-agent runs end (the fan-in,
with their failure policy), its time comes (a timer, a timeout), or it is cancelled. Like
:mod:`app.memory.waits`, every function runs inside a write transaction of the session store
and returns the :class:`~app.memory.waits.Effects` to carry out once it has committed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, func, insert, select, update

from app.memory.records import ErrorType, FailurePolicy, RunStatus, TimeoutPolicy, WaitKind
from app.memory.schema import accepted_runs, run_children, runs, steps, waits
from app.memory.waits import (
    CANCELLED_REASON,
    Child,
    Effects,
    Ended,
    OpenWait,
    add_child,
    resolve,
    resume,
    unpark,
)


def end_waiting(
    conn: Connection,
    run_id: str,
    step: int,
    status: RunStatus,
    reason: str,
    error_type: ErrorType,
    resolution: str,
    now: datetime,
    *,
    settle: bool = True,
) -> Effects:
    """End a run parked at ``step`` (cancelled, timed out, a child failed), with its other
    sub-agent runs cancelled and (``settle``) its parent told; nothing when it is not parked
    there."""
    effects = Effects()
    ended = {"status": status, "error": reason, "error_type": error_type, "finished_at": now}
    if not unpark(conn, run_id, step, ended):
        return effects
    row = resolve(conn, run_id, step, resolution, now)
    effects.ended.append(Ended(run_id, row["tenant"], status, reason, error_type))
    effects.extend(_cancel_children(conn, run_id, now))
    if settle:
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
    add_child(
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
    row = conn.execute(select(runs.c.status, runs.c.next_step).where(runs.c.id == run_id)).first()
    if row is None:
        return None, Effects()
    status, effects = row.status, Effects()
    if status is RunStatus.WAITING:
        effects = end_waiting(
            conn, run_id, row.next_step - 1, RunStatus.CANCELLED, reason, ErrorType.CANCELLED,
            "cancelled", now, settle=settle,
        )  # fmt: skip
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
