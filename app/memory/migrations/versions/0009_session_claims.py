"""Sessions know their running run (``active_run``: two runs of a session never interleave) and
count the changes to their history (``history_version``: the history cache's tag); a run may
fail as ``session_busy``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen copies of app.memory.records.ErrorType's values before and at this revision.
ERROR_TYPES = (
    "budget_exceeded",
    "output_rejected",
    "tool_not_allowed",
    "model_error",
    "input_rejected",
    "unknown_agent",
    "dead_lettered",
)
ERROR_TYPES_0009 = (*ERROR_TYPES, "session_busy")


def _allowed(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("active_run", sa.String(), nullable=True))
        batch.add_column(
            sa.Column("history_version", sa.Integer(), nullable=False, server_default="0")
        )
    # SQLite cannot change a constraint in place: batch mode copies the table.
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint(
            "ck_runs_error_type", _allowed("error_type", ERROR_TYPES_0009)
        )


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.create_check_constraint("ck_runs_error_type", _allowed("error_type", ERROR_TYPES))
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("history_version")
        batch.drop_column("active_run")
