"""The session store's tables (SQLAlchemy Core); Alembic's migrations create exactly these."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.types import UserDefinedType

from app.constants import DEFAULT_TENANT, EMBEDDING_DIM
from app.memory.records import (
    ErrorType,
    FailurePolicy,
    RunStatus,
    StepKind,
    TimeoutPolicy,
    WaitKind,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=enum.StrEnum)


class EnumText(TypeDecorator[E]):
    """A column of one of ``enum``'s values, stored as its text and read back as a member."""

    impl = String
    cache_ok = True

    def __init__(self, enum_type: type[E]) -> None:
        super().__init__()
        self.enum_type = enum_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        # Plain text for the driver: psycopg adapts a bare Enum by its name, not its value.
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum_type(value)


def allowed(column: str, values: type[enum.StrEnum]) -> str:
    """A CHECK condition: ``column`` holds one of ``values`` (NULL passes, as in any CHECK)."""
    listed = ", ".join(f"'{value.value}'" for value in values)
    return f"{column} IN ({listed})"


class JsonValue(TypeDecorator[Any]):
    """JSONB on PostgreSQL (indexable, compact), JSON text elsewhere; None is stored as SQL
    NULL. PostgreSQL's types are imported only by an engine on PostgreSQL."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(self.impl_instance)


class PgVector(UserDefinedType[str]):
    """pgvector's ``vector(dim)`` type; its values travel as the text ``[x,y,...]``."""

    cache_ok = True

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def get_col_spec(self, **_kw: Any) -> str:
        return f"vector({self.dim})"


class Embedding(TypeDecorator[Any]):
    """A memory's embedding (a float32 numpy array): pgvector's ``vector(EMBEDDING_DIM)`` on
    PostgreSQL, little-endian float32 bytes elsewhere (SQLite). On a PostgreSQL without
    pgvector the migration makes the column BYTEA (the pgvector store then refuses to run).
    numpy is imported when a value is converted: a worker that stores no memory never loads
    it."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(PgVector(EMBEDDING_DIM))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        import numpy as np

        array = np.asarray(value, dtype="<f4")
        if dialect.name == "postgresql":
            return "[" + ",".join(map(repr, array.tolist())) + "]"
        return array.tobytes()

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        import numpy as np

        if isinstance(value, str):  # pgvector's text form
            return np.array(value.strip("[]").split(","), dtype=np.float32)
        return np.frombuffer(value, dtype="<f4").copy()

    def compare_against_backend(self, dialect: Dialect, conn_type: Any) -> bool | None:
        # Alembic's autogenerate: vector(384) or the BYTEA stand-in are both this column.
        return True


metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String, primary_key=True),
    Column("agent", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    # The run that holds the session (its runs go one at a time); free once it is not running.
    Column("active_run", String, nullable=True),
    # Moves each time a run of the session succeeds: the history cache's entries carry it.
    Column("history_version", Integer, nullable=False, server_default="0"),
    # Whose it is: only runs of this tenant may use it, only this tenant may read it.
    Column("tenant", String, nullable=False, server_default=DEFAULT_TENANT),
    Index("ix_sessions_tenant", "tenant"),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String, primary_key=True),  # the Celery task id of the run's first message
    Column("session_id", String, ForeignKey("sessions.id"), nullable=True),
    Column("agent", String, nullable=False),
    Column("input", JsonValue, nullable=True),
    Column("status", EnumText(RunStatus), nullable=False),
    Column("next_step", Integer, nullable=False),
    Column("answer", JsonValue, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("error_type", EnumText(ErrorType), nullable=True),  # why a failed run ended
    Column("budget", JsonValue, nullable=True),  # the run's limits (app.agents.guardrails.Budget)
    Column("traceback", Text, nullable=True),  # of the error a failed run ended with
    Column("tenant", String, nullable=False, server_default=DEFAULT_TENANT),  # whose run it is
    # A sub-agent run: the run that delegated to it, and its ancestors' agent types.
    Column("parent_id", String, nullable=True),
    Column("lineage", JsonValue, nullable=True),
    # Cancelled while running: the run ends ``cancelled`` at its next step boundary.
    Column("cancel_requested_at", UtcDateTime, nullable=True),
    # What its sub-agent runs spent: they count against its budget once they have ended.
    Column("child_tokens_in", Integer, nullable=False, server_default="0"),
    Column("child_tokens_out", Integer, nullable=False, server_default="0"),
    CheckConstraint(allowed("status", RunStatus), name="ck_runs_status"),
    CheckConstraint(allowed("error_type", ErrorType), name="ck_runs_error_type"),
    Index("ix_runs_session_created", "session_id", "created_at"),
    Index("ix_runs_status", "status"),
    Index("ix_runs_created_id", "created_at", "id"),  # the run listing's order and cursor
    Index("ix_runs_tenant_created", "tenant", "created_at"),  # a tenant's runs, newest first
    Index("ix_runs_parent", "parent_id"),  # a run's sub-agent runs (the tree, cancellation)
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", String, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("kind", EnumText(StepKind), nullable=False),
    Column("model_output", Text, nullable=False),
    # [{"id", "name", "args", "result", "error"}, ...]: app.memory.records.CallRecord
    Column("tool_calls", JsonValue, nullable=True),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("worker", String, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("replica", String, nullable=True),  # the inference server the model call went to
    CheckConstraint(allowed("kind", StepKind), name="ck_steps_kind"),
)

# A step's model reply, kept before its tool calls run (one row per run while a tool step is
# under way; the step's commit deletes it). No foreign key: it may be written for a run whose
# first step has not committed (the same transaction creates the run).
step_drafts = Table(
    "step_drafts",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("model_output", Text, nullable=False),
    Column("tool_calls", JsonValue, nullable=False),  # the calls as asked, without results
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Each tool call's result as soon as it is known, so a redelivered step runs only the calls
# without one; the step's commit folds them into steps.tool_calls and deletes them.
tool_results = Table(
    "tool_results",
    metadata,
    Column("run_id", String, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("call_id", String, primary_key=True),
    Column("result", JsonValue, nullable=True),
    Column("error", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Runs a producer was told were accepted, written before their first message is pushed to
# Redis (durability.accepted = "sql"), so a run survives a Redis that loses it before a worker
# starts it: recovery (app.tasks.recovery) publishes its first message again, and drops the
# row once the run is in ``runs``. No foreign key: the run's row comes later, from a worker.
accepted_runs = Table(
    "accepted_runs",
    metadata,
    Column("id", String, primary_key=True),  # the run id (its first message's task id)
    Column("agent", String, nullable=False),
    Column("kwargs", JsonValue, nullable=False),  # the first message's keyword arguments
    Column("created_at", UtcDateTime, nullable=False),
    Index("ix_accepted_runs_created", "created_at"),
)

# Keys of the HTTP run API (app.memory.api_keys): the secret's SHA-256, never the secret.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String, primary_key=True),  # public: the key reads aq_<id>_<secret>
    Column("hash", String, nullable=False),  # SHA-256 hex of the secret
    Column("scopes", JsonValue, nullable=False),  # a list of submit, read, operate
    Column("tenant", String, nullable=True),
    Column("name", String, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
)

# Long-term memories (app.memory.vectors): a text, its metadata and its embedding, always of
# one tenant. ``seq`` numbers a tenant's memories in the order they were added (from
# memory_changes.seq): the embedded backend's in-process matrix loads only the rows past the
# last it holds. On PostgreSQL with pgvector the migration also creates an HNSW index on
# ``embedding`` (vector_cosine_ops), which is not listed here: SQLite has no such index.
memories = Table(
    "memories",
    metadata,
    Column("id", String, primary_key=True),
    Column("tenant", String, nullable=False),
    Column("agent", String, nullable=True),
    Column("session_id", String, nullable=True),
    Column("text", Text, nullable=False),
    Column("metadata", JsonValue, nullable=False),
    Column("embedding", Embedding, nullable=False),
    Column("model", String, nullable=False),  # the embedding model (and version) that made it
    Column("created_at", UtcDateTime, nullable=False),
    Column("seq", Integer, nullable=False),
    Index("ix_memories_tenant_agent", "tenant", "agent"),
    Index("ix_memories_tenant_session", "tenant", "session_id"),
    Index("ix_memories_tenant_seq", "tenant", "seq", unique=True),
)

# One row per tenant with memories: the last ``seq`` given out, a count of deletions, and a
# random id of the row itself (a tenant deleted and started again gets a new one). A search on
# the embedded backend reads this row (a primary-key lookup) to know whether its in-process
# copy of the tenant's vectors is current, whichever process wrote.
memory_changes = Table(
    "memory_changes",
    metadata,
    Column("tenant", String, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("deletions", Integer, nullable=False),
    Column("generation", String, nullable=False),
)


# A parked run's wait, one row per step that parked (app.memory.waits): what it waits for
# (its sub-agent runs, a signal, a time), the tool call its end answers, and when it times
# out. ``due_at`` is set only while the wait is open (a timer's time, or a timeout), so the
# workers' poll for due waits reads ix_waits_due alone; an ended wait keeps its row with
# ``resolved_at`` and ``resolution``: a signal sent twice is known as delivered.
waits = Table(
    "waits",
    metadata,
    Column("run_id", String, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("step", Integer, primary_key=True),  # the step that parked (committed)
    Column("kind", EnumText(WaitKind), nullable=False),
    Column("name", String, nullable=True),  # a signal's name
    Column("call_id", String, nullable=False),  # the call a signal's or timer's end answers
    Column("agent", String, nullable=False),  # the run's agent type: its queue, its backlog
    Column("tenant", String, nullable=False, server_default=DEFAULT_TENANT),
    Column("due_at", UtcDateTime, nullable=True),
    Column("on_timeout", EnumText(TimeoutPolicy), nullable=False),
    Column("pending", Integer, nullable=False, server_default="0"),  # sub-agent runs not ended
    Column("message", JsonValue, nullable=False),  # the next step's message arguments
    Column("created_at", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("resolution", String, nullable=True),  # signal, timer, children, timeout, cancelled
    CheckConstraint(allowed("kind", WaitKind), name="ck_waits_kind"),
    CheckConstraint(allowed("on_timeout", TimeoutPolicy), name="ck_waits_on_timeout"),
    Index("ix_waits_due", "due_at"),
)

# The sub-agent runs a parked step started, one row each, written with the step's commit:
# the fan-in's record. A child run's end settles its row and counts its parent's wait down in
# its own commit's transaction; the one that counts it to zero resumes the parent.
run_children = Table(
    "run_children",
    metadata,
    Column("child_id", String, primary_key=True),
    Column("parent_id", String, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("step", Integer, nullable=False),  # the parent's step that delegated
    Column("call_id", String, nullable=False),  # the delegate call whose result it is part of
    Column("position", Integer, nullable=False),  # its place among that call's tasks
    Column("agent", String, nullable=False),
    Column("input", JsonValue, nullable=True),
    Column("on_failure", EnumText(FailurePolicy), nullable=False),
    Column("retries_left", Integer, nullable=False, server_default="0"),
    Column("status", EnumText(RunStatus), nullable=False),  # running until it ends
    Column("answer", JsonValue, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempt", Integer, nullable=False, server_default="1"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
    CheckConstraint(allowed("on_failure", FailurePolicy), name="ck_run_children_on_failure"),
    CheckConstraint(allowed("status", RunStatus), name="ck_run_children_status"),
    Index("ix_run_children_parent", "parent_id", "step"),
)
