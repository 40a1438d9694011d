"""The durable session and step store: runs are chains of steps committed under (run id, step).

SQLite (default, one file, WAL) or PostgreSQL, chosen by URL. Every method is one short
transaction, safe to call from many threads and processes at once: a step commits only
when it is the run's next step, so a re-delivered message or a second worker can never
commit the same step twice or one out of order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert

from app.errors import StoreError
from app.memory.engine import make_engine
from app.memory.schema import runs, sessions, steps

T = TypeVar("T")

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"


class _NoAnswer:
    def __repr__(self) -> str:
        return "NO_ANSWER"


NO_ANSWER: Final = _NoAnswer()
"""Default of ``commit_step(final_answer=...)``: the step is not final (None is a valid answer)."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One committed step: the model's output and the tool it called, if any."""

    step: int
    kind: str  # "tool" | "final" | "error"
    model_output: str
    tool: str | None = None
    tool_args: Any = None
    tool_result: Any = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    worker: str | None = None
    created_at: datetime | None = None  # set by the store on commit


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run's row: its status and where it stands, without its steps."""

    id: str
    session_id: str | None
    agent: str
    input: Any
    status: str  # "running" | "succeeded" | "failed"
    next_step: int
    answer: Any
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    error_type: str | None = None  # why a failed run ended (see app.guardrails, app.dlq)
    budget: dict[str, Any] | None = None  # the run's limits (app.guardrails.Budget)


@dataclass(frozen=True, slots=True)
class RunState(RunRecord):
    """A run with its committed steps, ordered by step index."""

    steps: list[StepRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run not yet in the store: the commit of its first step creates it, in one transaction.

    So a run's step 0 costs one write, not two; a worker lost before that commit leaves
    nothing behind, and the redelivered message starts the run afresh.
    """

    id: str
    agent: str
    input: Any
    session_id: str | None = None
    budget: dict[str, Any] | None = None
    # When its first step started (not when that step commits): wall-time budgets count it.
    created_at: datetime = field(default_factory=lambda: _now())

    def state(self) -> RunState:
        """The run as it stands before its first step."""
        return RunState(
            self.id,
            self.session_id,
            self.agent,
            self.input,
            RUNNING,
            0,
            None,
            None,
            self.created_at,
            None,
            budget=self.budget,
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _insert(dialect: str, table: Table) -> Insert:
    # ON CONFLICT DO NOTHING: concurrent inserts of the same key both succeed; rowcount
    # (kept on request only, for INSERT) says whether this one wrote the row.
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


_STEP_COLUMNS = tuple(c.name for c in steps.c if c.name != "run_id")


class _Statements:
    """The step path's statements, built once and executed with parameters.

    Building ``insert(...).values(...)`` or ``update(...).where(...)`` per call, and hashing
    it for SQLAlchemy's compiled cache, was most of a step's SQL CPU (profiled); a statement
    built once keeps its cache key and compiles once per set of parameter names.
    """

    def __init__(self, dialect: str) -> None:
        self.insert_session = _insert(dialect, sessions)
        self.insert_run = _insert(dialect, runs)
        self.insert_step = _insert(dialect, steps)
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
            runs.c.status == RUNNING,
        )
        self._creates: dict[tuple[frozenset[str], bool], Insert] = {}
        # One round trip: the run joined to its steps (a run without steps yields one row).
        step_cols = [steps.c[name].label(f"step_{name}") for name in _STEP_COLUMNS]
        self.load = (
            select(*runs.c, *step_cols)
            .select_from(runs.outerjoin(steps, steps.c.run_id == runs.c.id))
            .where(runs.c.id == bindparam("b_id"))
            .order_by(steps.c.step)
        )

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
                updated_at=touched,
            )  # fmt: skip
            upsert = session.on_conflict_do_update(
                index_elements=[sessions.c.id], set_={"updated_at": session.excluded.updated_at}
            )
            # Referenced by nothing, so added explicitly; PostgreSQL runs every data-modifying
            # WITH once, and checks the run's foreign key at the end of the statement.
            statement = statement.add_cte(upsert.returning(sessions.c.id).cte("new_session"))
        self._creates[key] = statement
        return statement


class SessionStore:
    """Sessions, runs and their steps in SQL; share one instance between a process's threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(sqlite_begin="IMMEDIATE")
        self._dialect = engine.dialect.name
        # Reads are one statement each, consistent on its own: no BEGIN and COMMIT around it
        # (two round trips fewer per read on PostgreSQL).
        self._reader = (
            engine.execution_options(sqlite_begin=None)
            if self._dialect == "sqlite"
            else engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._sql = _Statements(self._dialect)
        # SQLite has one writer at a time. A process's threads queue for it here, in order,
        # rather than in SQLite's busy handler, which sleeps and retries (measured: 120 ms
        # mean wait per write with 64 threads, most of it sleeping past a free lock).
        self._write_lock = threading.Lock() if self._dialect == "sqlite" else None
        self._sqlite_writer: Connection | None = None  # guarded by _write_lock

    @classmethod
    def from_url(cls, url: str, *, migrate: bool) -> SessionStore:
        """A store on ``url``; with ``migrate`` the schema is upgraded first (safe to race)."""
        engine = make_engine(url)
        if migrate:
            from app.memory.migrate import migrate as run_migrations

            run_migrations(engine)
        return cls(engine)

    @property
    def engine(self) -> Engine:
        """The engine the store runs on."""
        return self._engine

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction (SQLite: the process's writers queue for it in order)."""
        if self._write_lock is not None:
            with self._write_lock, self._sqlite_transaction() as conn:
                yield conn
            return
        try:
            with self._writer.connect() as conn:
                conn.begin()
                yield conn
                if conn.in_transaction():
                    conn.commit()
        except DBAPIError as exc:
            raise store_error(exc, self._engine) from exc

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[Connection]:
        # One writer at a time, so one connection for all of them, kept between writes:
        # no pool checkout, connection object and reset per write. Dropped after an error.
        conn = self._sqlite_writer
        if conn is None or conn.closed or conn.invalidated:
            conn = self._sqlite_writer = self._writer.connect()
        try:
            conn.begin()
            yield conn
            if conn.in_transaction():
                conn.commit()
        except BaseException as exc:
            self._sqlite_writer = None
            conn.close()  # rolls back what is open and returns the connection to the pool
            if isinstance(exc, DBAPIError):
                raise store_error(exc, self._engine) from exc
            raise

    def _read(self, query: Callable[[Connection], T]) -> T:
        """``query``'s one statement, no transaction around it; once more on a new connection
        when the server had dropped this one (restart, idle timeout): reads are idempotent,
        and so must be any write made this way."""
        for attempt in (1, 2):
            try:
                with self._reader.connect() as conn:
                    return query(conn)
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise store_error(exc, self._engine) from exc
        raise AssertionError("unreachable")

    def _insert_run(
        self, conn: Connection, run: NewRun, now: datetime, state: dict[str, Any] | None = None
    ) -> bool:
        """Create the run (and its session) unless it exists; whether this call created it.

        ``state`` gives the new row other values than a run before its first step (the commit
        of step 0 writes the run as that step leaves it: one statement less).
        """
        sql = self._sql
        new_session = False
        if run.session_id is not None:
            new_session = bool(
                conn.execute(
                    sql.insert_session,
                    {
                        "id": run.session_id,
                        "agent": run.agent,
                        "created_at": now,
                        "updated_at": now,
                    },
                ).rowcount
            )
        row = {
            "id": run.id,
            "session_id": run.session_id,
            "agent": run.agent,
            "input": run.input,
            "status": RUNNING,
            "next_step": 0,
            "created_at": run.created_at,
            "budget": run.budget,
            **(state or {}),
        }
        created = bool(conn.execute(sql.insert_run, row).rowcount)
        if created and run.session_id is not None and not new_session:
            conn.execute(sql.touch_session, {"b_id": run.session_id, "b_now": now})
        return created

    def start_run(
        self, run_id: str, agent: str, input: Any, session_id: str | None = None
    ) -> RunState:
        """Create the run (and its session) unless it exists, and return its current state."""
        with self._transaction() as conn:
            self._insert_run(conn, NewRun(run_id, agent, input, session_id), _now())
            state = self._load(conn, run_id)
        assert state is not None  # inserted above or already there
        return state

    def load_run(self, run_id: str) -> RunState | None:
        """The run and its steps, or None if no such run was started."""
        return self._read(lambda conn: self._load(conn, run_id))

    def _load(self, conn: Connection, run_id: str) -> RunState | None:
        rows = conn.execute(self._sql.load, {"b_id": run_id}).all()
        if not rows:
            return None
        first = rows[0]._mapping
        records = [
            StepRecord(**{name: row._mapping[f"step_{name}"] for name in _STEP_COLUMNS})
            for row in rows
            if row._mapping["step_step"] is not None
        ]
        return RunState(**{c.name: first[c.name] for c in runs.c}, steps=records)

    def history(
        self, session_id: str, *, before_run: str | None = None, limit: int = 20
    ) -> list[tuple[Any, Any]]:
        """(input, answer) of the session's last ``limit`` succeeded runs, oldest first.

        With ``before_run``, only runs started before that one count.
        """
        query = select(runs.c.input, runs.c.answer).where(
            runs.c.session_id == session_id, runs.c.status == SUCCEEDED
        )
        if before_run is not None:
            started = select(runs.c.created_at).where(runs.c.id == before_run).scalar_subquery()
            query = query.where(runs.c.created_at < started, runs.c.id != before_run)
        query = query.order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        rows = self._read(lambda conn: conn.execute(query).all())
        return [(row.input, row.answer) for row in reversed(rows)]

    def commit_step(
        self,
        run_id: str,
        record: StepRecord,
        *,
        final_answer: Any = NO_ANSWER,
        failed_reason: str | None = None,
        error_type: str | None = None,
        new_run: NewRun | None = None,
    ) -> bool:
        """Commit ``record`` as the run's next step; False if it is not the next step.

        False means another worker (or an earlier delivery) committed this step, the step
        is out of order, or the run has ended; nothing was written. With ``final_answer``
        (any JSON value) the run succeeds; with ``failed_reason`` it fails. With ``new_run``
        the run is created first if it does not exist, in the same transaction.
        """
        now = _now()
        ending: dict[str, Any] = {}
        if final_answer is not NO_ANSWER:
            ending = {"status": SUCCEEDED, "answer": final_answer, "finished_at": now}
        elif failed_reason is not None:
            ending = {
                "status": FAILED,
                "error": failed_reason,
                "error_type": error_type,
                "finished_at": now,
            }
        moved = {"next_step": record.step + 1, **ending}
        created = (
            new_run is not None
            and record.step == 0
            and self._dialect == "postgresql"
            and self._create_with_step(new_run, record, now, moved)
        )
        if created:
            return True
        # Otherwise (or the run was there already) the transaction says if this step is next.
        with self._transaction() as conn:
            created = False
            if new_run is not None and record.step == 0:
                # A run created by this commit is at step 0 by construction: written as the
                # step leaves it, no guard to check.
                created = self._insert_run(conn, new_run, now, moved)
            elif new_run is not None:
                self._insert_run(conn, new_run, now)
            # The guard comes first: on PostgreSQL it locks the run row, so a concurrent
            # commit of the same step waits here and then matches no row.
            if not created and (
                conn.execute(
                    self._sql.advance, {"b_id": run_id, "b_step": record.step, **moved}
                ).rowcount
                != 1
            ):
                conn.rollback()
                return False
            row = {name: getattr(record, name) for name in _STEP_COLUMNS}
            inserted = conn.execute(
                self._sql.insert_step, {**row, "run_id": run_id, "created_at": now}
            ).rowcount
            if inserted != 1:
                # The step row exists although next_step said otherwise: keep what is there.
                conn.rollback()
                return False
        return True

    def _create_with_step(
        self, run: NewRun, record: StepRecord, now: datetime, moved: dict[str, Any]
    ) -> bool:
        """PostgreSQL: create ``run`` as its first step ``record`` leaves it, with that step,
        in one statement; False (nothing written) when the run exists."""
        row = {
            "id": run.id, "session_id": run.session_id, "agent": run.agent, "input": run.input,
            "status": RUNNING, "created_at": run.created_at, "budget": run.budget, **moved,
        }  # fmt: skip
        params = {f"r_{name}": value for name, value in row.items()}
        params.update({f"s_{name}": getattr(record, name) for name in _STEP_COLUMNS})
        params["s_created_at"] = now
        if run.session_id is not None:
            params.update(session_id=run.session_id, agent=run.agent, now=now)
        statement = self._sql.create_with_step(frozenset(row), run.session_id is not None)
        # Safe to repeat (the _read way) after a dropped connection: a run created by the
        # first try makes the second insert nothing, and the caller asks the store.
        return bool(self._read(lambda conn: conn.execute(statement, params).rowcount))

    def fail_run(
        self,
        run_id: str,
        reason: str,
        new_run: NewRun | None = None,
        *,
        error_type: str | None = None,
    ) -> bool:
        """End a running run as failed without a step; False if it is not running.

        With ``new_run`` a run that has not committed a step yet is created first.
        """
        with self._transaction() as conn:
            if new_run is not None:
                self._insert_run(conn, new_run, _now())
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == RUNNING)
                .values(status=FAILED, error=reason, error_type=error_type, finished_at=_now())
            ).rowcount
        return changed == 1

    def reopen_run(self, run_id: str, error_types: tuple[str, ...]) -> bool:
        """Set a failed run running again (a dead letter being replayed); False if it was not
        failed with one of ``error_types``. Its committed steps stay as they are."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(runs)
                .where(
                    runs.c.id == run_id,
                    runs.c.status == FAILED,
                    runs.c.error_type.in_(error_types),
                )
                .values(status=RUNNING, error=None, error_type=None, finished_at=None)
            ).rowcount
        return changed == 1

    def count_steps(self, run_id: str) -> int:
        """How many steps of the run are committed."""
        query = select(func.count()).select_from(steps).where(steps.c.run_id == run_id)
        return int(self._read(lambda conn: conn.execute(query).scalar_one()))

    def list_runs(
        self, agent: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """The most recent runs, newest first, optionally of one agent type or status."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id).limit(limit)
        if agent is not None:
            query = query.where(runs.c.agent == agent)
        if status is not None:
            query = query.where(runs.c.status == status)
        rows = self._read(lambda conn: conn.execute(query).all())
        return [RunRecord(**row._mapping) for row in rows]

    def ping(self) -> None:
        """``SELECT 1`` on the database; raises :class:`StoreError` when it is unreachable."""
        self._read(lambda conn: conn.execute(select(1)).scalar_one())

    def close(self) -> None:
        """Close the store's connections."""
        if self._write_lock is not None:
            with self._write_lock:
                if self._sqlite_writer is not None:
                    self._sqlite_writer.close()
                    self._sqlite_writer = None
        self._engine.dispose()


_MISSING_TABLE_CODES = {"42P01"}  # PostgreSQL undefined_table


def store_error(exc: DBAPIError, engine: Engine) -> StoreError:
    """A :class:`StoreError` saying what the database reported and what to do about it."""
    where = engine.url.render_as_string(hide_password=True)
    detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if getattr(exc.orig, "sqlstate", None) in _MISSING_TABLE_CODES or "no such table" in detail:
        return StoreError(
            f"the session store at {where} has no schema ({detail}); "
            "run `agentq db upgrade` or start with AGENTQ_AUTO_MIGRATE=true"
        )
    return StoreError(
        f"session store at {where} failed: {detail}; "
        "check that the database is reachable and AGENTQ_DATABASE_URL is right"
    )
