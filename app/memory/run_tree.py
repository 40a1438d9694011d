"""A run's family as readers show it: its sub-agent runs (recursively, a tree) and what it waits
for while parked. Read-only queries over ``run_children``, ``runs`` and ``waits``
(:mod:`app.memory.waits` writes them); ``agentq runs show``, the HTTP API and the run
inspector read them through :func:`app.ops.runs.run_detail`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from app.memory.records import RunStatus, TimeoutPolicy, WaitKind
from app.memory.schema import run_children, runs, waits

MAX_LEVELS = 16
"""Levels of sub-agent runs read at most (``orchestration.max_depth`` is far below)."""
MAX_NODES = 1000
"""Sub-agent runs read at most, all levels together: a tree larger is cut (``truncated``)."""


@dataclass(frozen=True, slots=True)
class ChildRun:
    """A sub-agent run: ``queued`` while it has not started; its last ``attempt`` is the one a
    retry started (each attempt is a run of its own)."""

    run_id: str
    agent: str
    status: str  # a run status, or "queued" (not started)
    answer: Any = None
    error: str | None = None
    step: int = 0  # the parent's step that delegated to it
    attempt: int = 1
    children: tuple[ChildRun, ...] = ()


@dataclass(frozen=True, slots=True)
class WaitInfo:
    """What a parked run waits for: a signal ``name``, ``pending`` sub-agent runs, or a time
    (``due_at``: a timer's time, else the wait's timeout)."""

    kind: WaitKind
    step: int
    name: str | None
    pending: int
    due_at: datetime | None
    on_timeout: TimeoutPolicy
    since: datetime


@dataclass(frozen=True, slots=True)
class Family:
    """A run's sub-agent runs and its open wait; ``truncated``: the tree had more than
    :data:`MAX_NODES` runs and the rest were left out."""

    children: tuple[ChildRun, ...] = ()
    waiting_for: WaitInfo | None = None
    truncated: bool = False


def family(conn: Connection, run_id: str, parked: bool) -> Family:
    """The sub-agent runs of ``run_id`` (each with its own, oldest first) and, ``parked``, its
    open wait."""
    tree, truncated = children_tree(conn, run_id)
    return Family(tree, open_wait_info(conn, run_id) if parked else None, truncated)


def open_wait_info(conn: Connection, run_id: str) -> WaitInfo | None:
    """The open wait of ``run_id`` (None: it is not parked)."""
    row = conn.execute(
        select(waits).where(waits.c.run_id == run_id, waits.c.resolved_at.is_(None))
    ).first()
    if row is None:
        return None
    wait = row._mapping
    return WaitInfo(
        wait["kind"],
        wait["step"],
        wait["name"],
        wait["pending"],
        wait["due_at"],
        wait["on_timeout"],
        wait["created_at"],
    )


def children_tree(conn: Connection, run_id: str) -> tuple[tuple[ChildRun, ...], bool]:
    """The sub-agent runs under ``run_id``, level by level (one query a level); whether the tree
    was cut at :data:`MAX_NODES`."""
    rows_of: dict[str, list[Any]] = {}
    level, read, truncated = [run_id], 0, False
    for _ in range(MAX_LEVELS):
        if not level or truncated:
            break
        rows = conn.execute(
            select(
                run_children.c.child_id,
                run_children.c.parent_id,
                run_children.c.agent,
                run_children.c.status.label("child_status"),
                run_children.c.answer.label("child_answer"),
                run_children.c.error.label("child_error"),
                run_children.c.step,
                run_children.c.attempt,
                runs.c.id.label("stored"),
                runs.c.status,
                runs.c.answer,
                runs.c.error,
            )
            .select_from(run_children.outerjoin(runs, runs.c.id == run_children.c.child_id))
            .where(run_children.c.parent_id.in_(level))
            .order_by(
                run_children.c.step,
                run_children.c.call_id,
                run_children.c.position,
                run_children.c.attempt,
            )
            .limit(MAX_NODES - read + 1)
        ).all()
        if len(rows) > MAX_NODES - read:
            rows, truncated = rows[: MAX_NODES - read], True
        read += len(rows)
        for row in rows:
            rows_of.setdefault(row.parent_id, []).append(row)
        level = [row.child_id for row in rows]
    return _build(rows_of, run_id), truncated


def _build(rows_of: dict[str, list[Any]], parent: str) -> tuple[ChildRun, ...]:
    made = []
    for row in rows_of.get(parent, []):
        if row.stored is not None:  # started: its own row says where it stands
            status, answer, error = str(row.status), row.answer, row.error
        elif row.child_status is RunStatus.RUNNING:
            status, answer, error = "queued", None, None
        else:
            status, answer, error = str(row.child_status), row.child_answer, row.child_error
        made.append(
            ChildRun(
                row.child_id,
                row.agent,
                status,
                answer,
                error,
                row.step,
                row.attempt,
                _build(rows_of, row.child_id),
            )
        )
    return tuple(made)
