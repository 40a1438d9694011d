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
        add_child(conn, run_id, step, child, child.retries, 1, now)
        effects.started.append(child)
    return effects


def add_child(
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
    if not unpark(conn, run_id, step, {"status": RunStatus.RUNNING}):
        return None
    row = resolve(conn, run_id, step, resolution, now)
    _fill_results(conn, run_id, step, results)
    return Resumed(run_id, row["agent"], step + 1, dict(row["message"]))


def unpark(conn: Connection, run_id: str, step: int, values: Mapping[str, Any]) -> bool:
    """Move ``run_id`` out of ``waiting`` (to ``values``) if it is parked at ``step``: the
    conditional update that makes a wait end once, whoever races for it."""
    where = and_(runs.c.id == run_id, runs.c.status == RunStatus.WAITING,
                 runs.c.next_step == step + 1)  # fmt: skip
    return int(conn.execute(update(runs).where(where).values(**values)).rowcount) == 1


def resolve(conn: Connection, run_id: str, step: int, resolution: str, now: datetime) -> RowMapping:
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


def due_at(now: datetime, seconds: float | None) -> datetime | None:
    """``seconds`` from ``now`` (None: never)."""
    return None if seconds is None else now + timedelta(seconds=seconds)
