"""The durable session and step store: runs are chains of steps committed under (run id, step).

SQLite (default, one file, WAL) or PostgreSQL, chosen by URL. Every method is one short
transaction, safe to call from many threads and processes at once: a step commits only
when it is the run's next step, so a re-delivered message or a second worker can never
commit the same step twice or one out of order.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError

from app.constants import DEFAULT_TENANT
from app.errors import StoreError
from app.memory import endings, waits
from app.memory.engine import make_engine
from app.memory.records import (
    NO_ANSWER,
    CallRecord,
    ErrorType,
    NewRun,
    RunRecord,
    RunState,
    RunStatus,
    StepDraft,
    StepRecord,
    utc_now,
)
from app.memory.schema import runs, steps
from app.memory.statements import (
    Statements,
    draft_record,
    step_record,
    step_values,
)
from app.memory.waits import Effects, Park

__all__ = [
    "NO_ANSWER",
    "CallRecord",
    "ErrorType",
    "NewRun",
    "RunRecord",
    "RunState",
    "RunStatus",
    "SessionStore",
    "StepDraft",
    "StepRecord",
    "make_engine",
    "store_error",
]

T = TypeVar("T")


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
        self._sql = Statements(self._dialect, engine.dialect)
        # SQLite has one writer at a time. A process's threads queue for it here, in order,
        # rather than in SQLite's busy handler, which sleeps and retries (measured: 120 ms
        # mean wait per write with 64 threads, most of it sleeping past a free lock).
        self._write_lock = threading.Lock() if self._dialect == "sqlite" else None
        self._sqlite_writer: Connection | None = None  # guarded by _write_lock

    @classmethod
    def from_url(cls, url: str, *, migrate: bool) -> SessionStore:
        """A store on ``url``; with ``migrate`` a schema that is behind is upgraded first (safe
        to race; one read when it is current)."""
        engine = make_engine(url)
        if migrate:
            from app.memory.migrate import ensure_schema

            ensure_schema(engine, upgrade=True)
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

    def _kept_writer(self) -> Connection:
        # One writer at a time, so one connection for all of them, kept between writes:
        # no pool checkout, connection object and reset per write. Dropped after an error.
        conn = self._sqlite_writer
        if conn is None or conn.closed or conn.invalidated:
            conn = self._sqlite_writer = self._writer.connect()
        return conn

    @contextmanager
    def _sqlite_transaction(self) -> Iterator[Connection]:
        conn = self._kept_writer()
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

    def insert_session(
        self,
        conn: Connection,
        session_id: str,
        agent: str,
        now: datetime,
        tenant: str = DEFAULT_TENANT,
    ) -> bool:
        """Create the session (``tenant``'s) unless it exists; whether this call created it."""
        row = {
            "id": session_id, "agent": agent, "created_at": now, "updated_at": now,
            "tenant": tenant,
        }  # fmt: skip
        return bool(conn.execute(self._sql.insert_session, row).rowcount)

    def insert_run(
        self,
        conn: Connection,
        run: NewRun,
        now: datetime,
        state: dict[str, Any] | None = None,
        *,
        session_written: bool = False,
    ) -> bool:
        """Create the run (and its session) unless it exists; whether this call created it.

        ``state`` gives the new row other values than a run before its first step (the commit
        of step 0 writes the run as that step leaves it: one statement less).
        ``session_written``: the caller has created the session and moves its ``updated_at``
        itself (a session claim), so neither is done here.
        """
        sql = self._sql
        new_session = session_written
        if run.session_id is not None and not session_written:
            new_session = self.insert_session(conn, run.session_id, run.agent, now, run.tenant)
        row = {
            "id": run.id,
            "tenant": run.tenant,
            "session_id": run.session_id,
            "agent": run.agent,
            "input": run.input,
            "status": RunStatus.RUNNING,
            "next_step": 0,
            "created_at": run.created_at,
            "budget": run.budget,
            **({"parent_id": run.parent_id, "lineage": run.lineage} if run.parent_id else {}),
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
            self.insert_run(conn, NewRun(run_id, agent, input, session_id), utc_now())
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
            step_record(row._mapping, "step_")
            for row in rows
            if row._mapping["step_step"] is not None
        ]
        draft = None
        if first["draft_model_output"] is not None:  # a tool step under way: rare, one read more
            draft = self._with_results(
                conn, run_id, draft_record(first, first["next_step"], "draft_")
            )
        return RunState(
            **{c.name: first[c.name] for c in runs.c},
            steps=records,
            draft=draft,
            history_version=first["session_history_version"],
        )

    def _with_results(self, conn: Connection, run_id: str, draft: StepDraft) -> StepDraft:
        """``draft`` with the results its calls have kept so far."""
        rows = conn.execute(self._sql.load_results, {"b_id": run_id, "b_step": draft.step}).all()
        draft.results.update({row.call_id: (row.result, row.error) for row in rows})
        return draft

    def save_draft(self, run_id: str, draft: StepDraft, new_run: NewRun | None = None) -> StepDraft:
        """Keep a step's reply before its tool calls run; the draft kept, which is an earlier
        delivery's (with its results so far) when that one got there first.

        With ``new_run`` the run is created first if it does not exist, in the same
        transaction, so a draft always has its run.
        """
        now = utc_now()
        row = {
            "run_id": run_id,
            "step": draft.step,
            "model_output": draft.model_output,
            "tool_calls": list(draft.calls),
            "tokens_in": draft.tokens_in,
            "tokens_out": draft.tokens_out,
            "latency_ms": draft.latency_ms,
            "created_at": now,
        }
        with self._transaction() as conn:
            if new_run is not None:
                self.insert_run(conn, new_run, now)
            if conn.execute(self._sql.insert_draft, row).rowcount == 1:
                return draft
            stored = (
                conn.execute(self._sql.load_draft, {"b_id": run_id, "b_step": draft.step})
                .one()
                ._mapping
            )
            return self._with_results(conn, run_id, draft_record(stored, draft.step))

    def keep_result(
        self, run_id: str, step: int, call_id: str, result: Any, *, error: bool
    ) -> bool:
        """Keep one tool call's result until its step commits; False when the call had one
        already (that one stays)."""
        row = {
            "run_id": run_id,
            "step": step,
            "call_id": call_id,
            "result": result,
            "error": error,
            "created_at": utc_now(),
        }
        with self._transaction() as conn:
            return conn.execute(self._sql.insert_result, row).rowcount == 1

    def history(
        self, session_id: str, *, before_run: str | None = None, limit: int = 20
    ) -> list[tuple[Any, Any]]:
        """(input, answer) of the session's last ``limit`` succeeded runs, oldest first.

        With ``before_run``, only runs started before that one count.
        """
        query = select(runs.c.input, runs.c.answer).where(
            runs.c.session_id == session_id, runs.c.status == RunStatus.SUCCEEDED
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
        error_type: ErrorType | None = None,
        new_run: NewRun | None = None,
        drafted: bool = False,
        traceback: str | None = None,
        session_id: str | None = None,
        history: list[int] | None = None,
        park: Park | None = None,
        parent_id: str | None = None,
        effects: Effects | None = None,
    ) -> bool:
        """Commit ``record`` as the run's next step; False if it is not the next step.

        False means another worker (or an earlier delivery) committed this step, the step
        is out of order, or the run has ended; nothing was written. With ``final_answer``
        (any JSON value) the run succeeds; with ``failed_reason`` it fails (``traceback``: of
        the error it failed with). With ``new_run``
        the run is created first if it does not exist, in the same transaction. A step that made
        tool calls, or ``drafted`` (a draft of it may have been saved), deletes its draft and
        kept results in the same transaction: the step row holds them now. A run of
        ``session_id`` that succeeds moves its session's history version, in the same
        transaction (the history cache's entries for the old version are never read again);
        the new version is appended to ``history`` when it is given. With ``park`` the run
        waits (``waiting``) instead of going on, its wait and sub-agent runs recorded in the
        same transaction; a sub-agent run (``parent_id``) that ends settles its parent's wait
        in it too. What to carry out after the commit is added to ``effects``
        (:mod:`app.memory.waits`).
        """
        now = utc_now()
        ending: dict[str, Any] = {}
        if final_answer is not NO_ANSWER:
            ending = {"status": RunStatus.SUCCEEDED, "answer": final_answer, "finished_at": now}
        elif failed_reason is not None:
            ending = {
                "status": RunStatus.CANCELLED
                if error_type is ErrorType.CANCELLED
                else RunStatus.FAILED,
                "error": failed_reason,
                "error_type": error_type,
                "traceback": traceback,
                "finished_at": now,
            }
        if park is not None:
            ending = {"status": RunStatus.WAITING}
        moved = {"next_step": record.step + 1, **ending}
        parent_id = parent_id or (new_run.parent_id if new_run is not None else None)
        if (
            new_run is not None
            and parent_id is None  # a sub-agent run's end settles its parent's wait below
            and record.step == 0
            and not (drafted or record.tool_calls)  # its draft goes in the transaction below
        ):
            if (
                self._dialect == "postgresql"
                and new_run.session_id is None
                and self._create_with_step(new_run, record, now, moved)
            ):
                return True
            if (
                self._write_lock is not None
                and new_run.session_id is None
                and self._sqlite_create_with_step(new_run, record, now, moved)
            ):
                return True
        # Otherwise (or the run was there already) the transaction says if this step is next.
        with self._transaction() as conn:
            created = False
            if new_run is not None and record.step == 0:
                # A run created by this commit is at step 0 by construction: written as the
                # step leaves it, no guard to check.
                created = self.insert_run(conn, new_run, now, moved)
            elif new_run is not None:
                self.insert_run(conn, new_run, now)
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
            inserted = conn.execute(
                self._sql.insert_step, {**step_values(record), "run_id": run_id, "created_at": now}
            ).rowcount
            if inserted != 1:
                # The step row exists although next_step said otherwise: keep what is there.
                conn.rollback()
                return False
            session_id = session_id or (new_run.session_id if new_run is not None else None)
            if session_id is not None and final_answer is not NO_ANSWER:
                moved_to = conn.execute(
                    self._sql.bump_history, {"b_id": session_id, "b_now": now}
                ).scalar()
                if history is not None and moved_to is not None:
                    history.append(moved_to)
            if drafted or record.tool_calls:
                of_step = {"b_id": run_id, "b_step": record.step}
                conn.execute(self._sql.delete_results, of_step)
                conn.execute(self._sql.delete_draft, of_step)
            done = Effects()
            if park is not None:
                done = waits.park(conn, run_id, record.step, park, now)
            elif parent_id is not None and ending:
                answer = final_answer if final_answer is not NO_ANSWER else None
                done = endings.settle_child(
                    conn, run_id, ending["status"], answer, failed_reason, now
                )
            if effects is not None:
                effects.extend(done)
        return True

    def _create_with_step(
        self, run: NewRun, record: StepRecord, now: datetime, moved: dict[str, Any]
    ) -> bool:
        """PostgreSQL: create ``run`` as its first step ``record`` leaves it, with that step,
        in one statement; False (nothing written) when the run exists."""
        row = {
            "id": run.id, "session_id": run.session_id, "agent": run.agent, "input": run.input,
            "status": RunStatus.RUNNING, "created_at": run.created_at, "budget": run.budget,
            "tenant": run.tenant, **moved,
        }  # fmt: skip
        params = {f"r_{name}": value for name, value in row.items()}
        params.update({f"s_{name}": value for name, value in step_values(record).items()})
        params["s_created_at"] = now
        if run.session_id is not None:
            params.update(session_id=run.session_id, agent=run.agent, now=now, tenant=run.tenant)
        statement = self._sql.create_with_step(frozenset(row), run.session_id is not None)
        # Safe to repeat (the _read way) after a dropped connection: a run created by the
        # first try makes the second insert nothing, and the caller asks the store.
        return bool(self._read(lambda conn: conn.execute(statement, params).rowcount))

    def _sqlite_create_with_step(
        self, run: NewRun, record: StepRecord, now: datetime, moved: dict[str, Any]
    ) -> bool:
        """SQLite, a run without a session: create ``run`` as its first step ``record`` leaves
        it, with that step, in one transaction run on the driver's cursor (0.15 ms of CPU,
        0.30 through SQLAlchemy's execution); False (nothing written) when the run exists.
        The same statements, bound the same way, as the transaction below."""
        assert self._write_lock is not None
        row = {
            "id": run.id, "session_id": None, "agent": run.agent, "input": run.input,
            "status": RunStatus.RUNNING, "created_at": run.created_at, "budget": run.budget,
            "tenant": run.tenant, **moved,
        }  # fmt: skip
        step = {**step_values(record), "run_id": run.id, "created_at": now}
        insert_run = self._sql.prepared_insert(runs, frozenset(row))
        insert_step = self._sql.prepared_insert(steps, frozenset(step))
        with self._write_lock:
            conn = self._kept_writer()
            driver = conn.connection.driver_connection
            assert driver is not None
            try:
                driver.execute("BEGIN IMMEDIATE")
                try:
                    created = (
                        driver.execute(insert_run.sql, insert_run.args(row)).rowcount == 1
                        and driver.execute(insert_step.sql, insert_step.args(step)).rowcount == 1
                    )
                    driver.execute("COMMIT" if created else "ROLLBACK")
                except BaseException:
                    if driver.in_transaction:
                        driver.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._sqlite_writer = None
                conn.close()  # as the transaction below drops its connection after an error
                error = DBAPIError.instance(insert_run.sql, None, exc, sqlite3.Error)
                assert isinstance(error, DBAPIError)  # what a DB-API error becomes
                raise store_error(error, self._engine) from exc
        return created

    def fail_run(
        self,
        run_id: str,
        reason: str,
        new_run: NewRun | None = None,
        *,
        error_type: ErrorType | None = None,
        traceback: str | None = None,
        effects: Effects | None = None,
    ) -> bool:
        """End a running run as failed without a step; False if it is not running.

        With ``new_run`` a run that has not committed a step yet is created first;
        ``traceback``: of the error the run failed with. A sub-agent run settles its parent's
        wait in the same transaction (what to carry out then is added to ``effects``).
        """
        with self._transaction() as conn:
            now = utc_now()
            if new_run is not None:
                self.insert_run(conn, new_run, now)
            changed = conn.execute(
                update(runs)
                .where(runs.c.id == run_id, runs.c.status == RunStatus.RUNNING)
                .values(
                    status=RunStatus.FAILED,
                    error=reason,
                    error_type=error_type,
                    traceback=traceback,
                    finished_at=now,
                )
            ).rowcount
            if changed == 1:
                done = endings.settle_child(conn, run_id, RunStatus.FAILED, None, reason, now)
                if effects is not None:
                    effects.extend(done)
        return changed == 1

    def reopen_run(self, run_id: str, error_types: tuple[ErrorType, ...]) -> bool:
        """Set a failed run running again (a dead letter being replayed); False if it was not
        failed with one of ``error_types``. Its committed steps stay as they are."""
        with self._transaction() as conn:
            changed = conn.execute(
                update(runs)
                .where(
                    runs.c.id == run_id,
                    runs.c.status == RunStatus.FAILED,
                    runs.c.error_type.in_(error_types),
                )
                .values(
                    status=RunStatus.RUNNING,
                    error=None,
                    error_type=None,
                    traceback=None,
                    finished_at=None,
                )
            ).rowcount
        return changed == 1

    def count_steps(self, run_id: str) -> int:
        """How many steps of the run are committed."""
        query = select(func.count()).select_from(steps).where(steps.c.run_id == run_id)
        return int(self._read(lambda conn: conn.execute(query).scalar_one()))

    def list_runs(
        self,
        agent: str | None = None,
        status: str | None = None,
        limit: int = 100,
        *,
        session_id: str | None = None,
        before: tuple[datetime, str] | None = None,
        tenant: str | None = None,
    ) -> list[RunRecord]:
        """The most recent runs, newest first (by ``created_at``, then id), optionally of one
        agent type, status, session or tenant; with ``before`` (created_at, id), only the runs
        that come after it in that order: the next page of a listing."""
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.id.desc()).limit(limit)
        if agent is not None:
            query = query.where(runs.c.agent == agent)
        if status is not None:
            query = query.where(runs.c.status == status)
        if session_id is not None:
            query = query.where(runs.c.session_id == session_id)
        if tenant is not None:
            query = query.where(runs.c.tenant == tenant)
        if before is not None:
            # A row value, not OR: PostgreSQL reads it straight off ix_runs_created_id.
            query = query.where(tuple_(runs.c.created_at, runs.c.id) < before)
        rows = self._read(lambda conn: conn.execute(query).all())
        return [RunRecord(**row._mapping) for row in rows]

    def stored_ids(self, run_ids: Collection[str]) -> set[str]:
        """Which of ``run_ids`` the store has a run of."""
        if not run_ids:
            return set()
        query = select(runs.c.id).where(runs.c.id.in_(list(run_ids)))
        return set(self._read(lambda conn: conn.execute(query).scalars().all()))

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction, for the store's other tables (:mod:`app.memory.recovery`)."""
        return self._transaction()

    def read(self, query: Callable[[Connection], T]) -> T:
        """``query``'s one read statement, as the store reads (:mod:`app.memory.recovery`)."""
        return self._read(query)

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
