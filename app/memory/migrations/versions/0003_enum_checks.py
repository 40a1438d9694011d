"""Run states, step kinds and error types are limited to their enums' values (CHECK).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of the values of app.memory.records' enums at this revision; a test holds a
# migrated database to app.memory.schema's constraints, which are derived from the enums.
RUN_STATUSES = ("running", "succeeded", "failed")
STEP_KINDS = ("tool", "denied", "final", "error")
ERROR_TYPES = (
    "budget_exceeded",
    "output_rejected",
    "tool_not_allowed",
    "model_error",
    "input_rejected",
    "unknown_agent",
    "dead_lettered",
)


def _allowed(column: str, values: tuple[str, ...]) -> str:
    listed = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({listed})"


def upgrade() -> None:
    # SQLite cannot add a constraint in place: batch mode copies the table (app.memory.migrate
    # turns foreign keys off around it, or dropping the old runs would cascade to steps).
    with op.batch_alter_table("runs") as batch:
        batch.create_check_constraint("ck_runs_status", _allowed("status", RUN_STATUSES))
        batch.create_check_constraint("ck_runs_error_type", _allowed("error_type", ERROR_TYPES))
    with op.batch_alter_table("steps") as batch:
        batch.create_check_constraint("ck_steps_kind", _allowed("kind", STEP_KINDS))


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_constraint("ck_steps_kind", type_="check")
    with op.batch_alter_table("runs") as batch:
        batch.drop_constraint("ck_runs_error_type", type_="check")
        batch.drop_constraint("ck_runs_status", type_="check")
