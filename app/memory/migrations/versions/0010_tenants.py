"""Tenants: every run and session is a tenant's (``tenant``, ``'default'`` for the rows already
there), indexed for a tenant's listings; a run may fail as ``foreign_session`` (it named a
session of another tenant).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen copies of app.memory.records.ErrorType's values before and at this revision.
ERROR_TYPES_0009 = (
    "budget_exceeded",
    "output_rejected",
    "tool_not_allowed",
    "model_error",
    "input_rejected",
    "unknown_agent",
    "dead_lettered",
    "session_busy",
)
ERROR_TYPES_0010 = (*ERROR_TYPES_0009, "foreign_session")
DEFAULT_TENANT = "default"  # frozen copy of app.constants.DEFAULT_TENANT


def _allowed(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def _tenant() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(), nullable=False, server_default=DEFAULT_TENANT)


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(_tenant())
        batch.create_index("ix_sessions_tenant", ["tenant"])
    # SQLite cannot change a constraint in place: batch mode copies the table.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(_tenant())
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint(
            "ck_runs_error_type", _allowed("error_type", ERROR_TYPES_0010)
        )
        batch.create_index("ix_runs_tenant_created", ["tenant", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_tenant_created")
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint(
            "ck_runs_error_type", _allowed("error_type", ERROR_TYPES_0009)
        )
        batch.drop_column("tenant")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_tenant")
        batch.drop_column("tenant")
