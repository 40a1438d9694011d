"""The session store's step-path statements, built once per dialect."""

from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Dialect,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from app.memory.records import CallRecord, RunStatus, StepDraft, StepRecord
from app.memory.schema import runs, sessions, step_drafts, steps, tool_results


def insert_ignoring(dialect: str, table: Table) -> Insert:
    # ON CONFLICT DO NOTHING: concurrent inserts of the same key both succeed; rowcount
    # (kept on request only, for INSERT) says whether this one wrote the row.
    # The dialect's module is imported for the engine in use only.
    module = importlib.import_module(f"sqlalchemy.dialects.{dialect}")
    return module.insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


STEP_COLUMNS = tuple(c.name for c in steps.c if c.name != "run_id")
DRAFT_COLUMNS = ("model_output", "tool_calls", "tokens_in", "tokens_out", "latency_ms")


def step_values(record: StepRecord) -> dict[str, Any]:
    """A step's column values (its calls as JSON; none: NULL)."""
    values = {name: getattr(record, name) for name in STEP_COLUMNS if name != "tool_calls"}
    values["tool_calls"] = [c.to_json() for c in record.tool_calls] or None
    return values


def step_record(values: Any, prefix: str = "") -> StepRecord:
    """The :class:`StepRecord` of a row's step columns (named ``prefix + column``)."""
    fields = {name: values[prefix + name] for name in STEP_COLUMNS if name != "tool_calls"}
    calls = values[prefix + "tool_calls"] or ()
    return StepRecord(**fields, tool_calls=tuple(CallRecord.from_json(c) for c in calls))


def draft_record(values: Any, step: int, prefix: str = "") -> StepDraft:
    """The :class:`StepDraft` of a row's draft columns (its results are added separately)."""
    return StepDraft(
        step=step,
        model_output=values[prefix + "model_output"],
        calls=tuple(values[prefix + "tool_calls"]),
        tokens_in=values[prefix + "tokens_in"],
        tokens_out=values[prefix + "tokens_out"],
        latency_ms=values[prefix + "latency_ms"],
    )


class Prepared:
    """``statement`` compiled once for ``dialect`` (a positional one: SQLite's) with ``keys``
    as its parameters, to run on the driver's own cursor: its text, and its arguments bound
    as SQLAlchemy binds them (JSON encoded, timestamps in UTC, enums as text)."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Collection[str]) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect, column_keys=sorted(keys)))
        self.sql = compiled.string
        self._binds = [
            (name, compiled.binds[name].type.bind_processor(dialect))
            for name in compiled.positiontup or ()
        ]

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """The statement's positional arguments for ``params`` (by parameter name)."""
        return tuple(
            params[name] if process is None else process(params[name])
            for name, process in self._binds
        )


class Statements:
    """The step path's statements, built once and executed with parameters.

    Building ``insert(...).values(...)`` or ``update(...).where(...)`` per call, and hashing
    it for SQLAlchemy's compiled cache, was most of a step's SQL CPU (profiled); a statement
    built once keeps its cache key and compiles once per set of parameter names.
    """

    def __init__(self, dialect: str, sql_dialect: Dialect | None = None) -> None:
        self._dialect = sql_dialect  # for statements run on the driver (SQLite's step path)
        self._prepared: dict[tuple[str, frozenset[str]], Prepared] = {}
        self.insert_session = insert_ignoring(dialect, sessions)
        self.insert_run = insert_ignoring(dialect, runs)
        self.insert_step = insert_ignoring(dialect, steps)
        self.touch_session = (
            update(sessions)
            .where(sessions.c.id == bindparam("b_id"))
            .values(updated_at=bindparam("b_now"))
        )
        # The guard: the run is running and this is its next step. The new values come as
        # parameters named after their columns (next_step, status, answer, ...).
        self.advance = update(runs).where(
            runs.c.id == bindparam("b_id"),
            runs.c.next_step == bindparam("b_step"),
            runs.c.status == RunStatus.RUNNING,
        )
        self._creates: dict[tuple[frozenset[str], bool], Insert] = {}
        # One round trip: the run joined to its steps (a run without steps yields one row)
        # and to the draft of its next step, if a tool step is under way (in every row).
        step_cols = [steps.c[name].label(f"step_{name}") for name in STEP_COLUMNS]
        draft_cols = [step_drafts.c[name].label(f"draft_{name}") for name in DRAFT_COLUMNS]
        drafted = and_(step_drafts.c.run_id == runs.c.id, step_drafts.c.step == runs.c.next_step)
        # And its session's history version: the tag of the session's cached history.
        version = sessions.c.history_version.label("session_history_version")
        self.load = (
            select(*runs.c, *step_cols, *draft_cols, version)
            .select_from(
                runs.outerjoin(steps, steps.c.run_id == runs.c.id)
                .outerjoin(step_drafts, drafted)
                .outerjoin(sessions, sessions.c.id == runs.c.session_id)
            )
            .where(runs.c.id == bindparam("b_id"))
            .order_by(steps.c.step)
        )
        # A run of the session succeeded: its history changed.
        self.bump_history = (
            update(sessions)
            .where(sessions.c.id == bindparam("b_id"))
            .values(history_version=sessions.c.history_version + 1, updated_at=bindparam("b_now"))
            .returning(sessions.c.history_version)
        )
        self.insert_draft = insert_ignoring(dialect, step_drafts)
        self.insert_result = insert_ignoring(dialect, tool_results)
        run_id: BindParameter[str] = bindparam("b_id")
        step: BindParameter[int] = bindparam("b_step")
        self.load_draft = select(*step_drafts.c).where(
            step_drafts.c.run_id == run_id, step_drafts.c.step == step
        )
        self.load_results = select(*tool_results.c).where(
            tool_results.c.run_id == run_id, tool_results.c.step == step
        )
        self.delete_draft = delete(step_drafts).where(
            step_drafts.c.run_id == run_id, step_drafts.c.step == step
        )
        self.delete_results = delete(tool_results).where(
            tool_results.c.run_id == run_id, tool_results.c.step == step
        )

    def prepared_insert(self, table: Table, columns: frozenset[str]) -> Prepared:
        """SQLite: the insert (ignoring a row that exists) of ``columns`` of ``table``, to run
        on the driver's cursor; compiled once per table and set of columns."""
        assert self._dialect is not None
        key = (table.name, columns)
        prepared = self._prepared.get(key)
        if prepared is None:
            statement = insert_ignoring(self._dialect.name, table)
            prepared = self._prepared[key] = Prepared(statement, self._dialect, columns)
        return prepared

    def create_with_step(self, run_columns: frozenset[str], with_session: bool) -> Insert:
        """PostgreSQL: a new run (and its session) with its first step, in one statement:
        one round trip in autocommit instead of BEGIN, two or three INSERTs and COMMIT.
        Parameters: ``r_<column>`` of the run, ``s_<column>`` of the step and, with a
        session, ``session_id``, ``agent`` and ``now``. It inserts no step (rowcount 0)
        when the run exists; a session that exists has its ``updated_at`` moved."""
        key = (run_columns, with_session)
        statement = self._creates.get(key)
        if statement is not None:
            return statement
        from sqlalchemy.dialects import postgresql

        new_run = (
            postgresql.insert(runs)
            .values({c: bindparam(f"r_{c}", type_=runs.c[c].type) for c in sorted(run_columns)})
            .on_conflict_do_nothing()
            .returning(runs.c.id)
            .cte("new_run")
        )
        columns = [c for c in steps.c if c.name != "run_id"]
        statement = (
            insert(steps)
            .from_select(
                ["run_id", *(c.name for c in columns)],
                select(new_run.c.id, *(bindparam(f"s_{c.name}", type_=c.type) for c in columns)),
            )
            .execution_options(preserve_rowcount=True)
        )
        if with_session:
            touched = bindparam("now", type_=sessions.c.updated_at.type)
            session = postgresql.insert(sessions).values(
                id=bindparam("session_id"), agent=bindparam("agent"), created_at=touched,
                updated_at=touched, tenant=bindparam("tenant"),
            )  # fmt: skip
            upsert = session.on_conflict_do_update(
                index_elements=[sessions.c.id], set_={"updated_at": session.excluded.updated_at}
            )
            # Referenced by nothing, so added explicitly; PostgreSQL runs every data-modifying
            # WITH once, and checks the run's foreign key at the end of the statement.
            statement = statement.add_cte(upsert.returning(sessions.c.id).cte("new_session"))
        self._creates[key] = statement
        return statement
