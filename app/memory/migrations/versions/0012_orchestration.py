"""Orchestration: parked runs (waits), sub-agent runs (run_children, runs.parent_id and
lineage), cancellation (runs.cancel_requested_at, status cancelled), what children spent
(runs.child_tokens_in/out); new statuses waiting and cancelled, new error types.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Frozen copies of app.memory.records' values before and at this revision.
STATUSES_0011 = ("running", "succeeded", "failed")
STATUSES_0012 = ("running", "waiting", "succeeded", "failed", "cancelled")
ERROR_TYPES_0011 = (
    "budget_exceeded",
    "output_rejected",
    "tool_not_allowed",
    "model_error",
    "input_rejected",
    "unknown_agent",
    "dead_lettered",
    "session_busy",
    "foreign_session",
)
ERROR_TYPES_0012 = (*ERROR_TYPES_0011, "cancelled", "child_failed", "wait_timed_out")
WAIT_KINDS = ("children", "signal", "timer")
TIMEOUT_POLICIES = ("fail", "continue")
FAILURE_POLICIES = ("fail", "skip", "retry")
DEFAULT_TENANT = "default"
TIMESTAMP = sa.DateTime(timezone=True)
JSON_VALUE = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def _allowed(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("lineage", JSON_VALUE, nullable=True))
        batch.add_column(sa.Column("cancel_requested_at", TIMESTAMP, nullable=True))
        batch.add_column(
            sa.Column("child_tokens_in", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("child_tokens_out", sa.Integer(), nullable=False, server_default="0")
        )
        batch.drop_constraint("ck_runs_status", type_="check")
        batch.create_check_constraint("ck_runs_status", _allowed("status", STATUSES_0012))
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint(
            "ck_runs_error_type", _allowed("error_type", ERROR_TYPES_0012)
        )
        batch.create_index("ix_runs_parent", ["parent_id"])
    op.create_table(
        "waits",
        sa.Column(
            "run_id", sa.String(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False, server_default=DEFAULT_TENANT),
        sa.Column("due_at", TIMESTAMP, nullable=True),
        sa.Column("on_timeout", sa.String(), nullable=False),
        sa.Column("pending", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("message", JSON_VALUE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("resolution", sa.String(), nullable=True),
        sa.CheckConstraint(_allowed("kind", WAIT_KINDS), name="ck_waits_kind"),
        sa.CheckConstraint(_allowed("on_timeout", TIMEOUT_POLICIES), name="ck_waits_on_timeout"),
    )
    op.create_index("ix_waits_due", "waits", ["due_at"])
    op.create_table(
        "run_children",
        sa.Column("child_id", sa.String(), primary_key=True),
        sa.Column(
            "parent_id",
            sa.String(),
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("input", JSON_VALUE, nullable=True),
        sa.Column("on_failure", sa.String(), nullable=False),
        sa.Column("retries_left", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("answer", JSON_VALUE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            _allowed("on_failure", FAILURE_POLICIES), name="ck_run_children_on_failure"
        ),
        sa.CheckConstraint(_allowed("status", STATUSES_0012), name="ck_run_children_status"),
    )
    op.create_index("ix_run_children_parent", "run_children", ["parent_id", "step"])


def downgrade() -> None:
    op.drop_index("ix_run_children_parent", table_name="run_children")
    op.drop_table("run_children")
    op.drop_index("ix_waits_due", table_name="waits")
    op.drop_table("waits")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_parent")
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint(
            "ck_runs_error_type", _allowed("error_type", ERROR_TYPES_0011)
        )
        batch.drop_constraint("ck_runs_status", type_="check")
        batch.create_check_constraint("ck_runs_status", _allowed("status", STATUSES_0011))
        for column in (
            "child_tokens_out",
            "child_tokens_in",
            "cancel_requested_at",
            "lineage",
            "parent_id",
        ):
            batch.drop_column(column)
