"""The session store's tables (SQLAlchemy Core); Alembic's migrations create exactly these."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects import postgresql


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


# JSONB on PostgreSQL (indexable, compact); JSON text elsewhere. None is stored as SQL NULL.
JsonValue = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")

metadata = MetaData()

sessions = Table(
    "sessions",
    metadata,
    Column("id", String, primary_key=True),
    Column("agent", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String, primary_key=True),  # the Celery task id of the run's first message
    Column("session_id", String, ForeignKey("sessions.id"), nullable=True),
    Column("agent", String, nullable=False),
    Column("input", JsonValue, nullable=True),
    Column("status", String, nullable=False),
    Column("next_step", Integer, nullable=False),
    Column("answer", JsonValue, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    # Why a failed run ended: budget_exceeded, output_rejected, model_error, dead_lettered...
    Column("error_type", String, nullable=True),
    Column("budget", JsonValue, nullable=True),  # the run's limits (app.agents.guardrails.Budget)
    Index("ix_runs_session_created", "session_id", "created_at"),
    Index("ix_runs_status", "status"),
)

steps = Table(
    "steps",
    metadata,
    Column("run_id", String, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("kind", String, nullable=False),
    Column("model_output", Text, nullable=False),
    Column("tool", String, nullable=True),
    Column("tool_args", JsonValue, nullable=True),
    Column("tool_result", JsonValue, nullable=True),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("worker", String, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
)
