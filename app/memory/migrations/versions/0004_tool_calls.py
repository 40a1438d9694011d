"""A step keeps every tool call it made (several per reply), and each call's result is kept
as soon as it is known (drafts), so a redelivered step runs only the calls without one.

steps.tool / tool_args / tool_result become steps.tool_calls, a JSON list of
{"id", "name", "args", "result", "error"}; an existing step's one call gets the id "call_0".

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Frozen copies of the types in app.memory.schema at this revision.
TIMESTAMP = sa.DateTime(timezone=True)
JSON_VALUE = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)

_steps = sa.table(
    "steps",
    sa.column("run_id", sa.String()),
    sa.column("step", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("tool", sa.String()),
    sa.column("tool_args", JSON_VALUE),
    sa.column("tool_result", JSON_VALUE),
    sa.column("tool_calls", JSON_VALUE),
)


def _one_call(row: Any) -> list[dict[str, Any]]:
    # The old steps kept a failed call as {"error": ...} (plus "truncated" when cut).
    result = row.tool_result
    failed = (
        isinstance(result, dict) and "error" in result and set(result) <= {"error", "truncated"}
    )
    error = row.kind == "denied" or failed
    return [
        {"id": "call_0", "name": row.tool, "args": row.tool_args, "result": result, "error": error}
    ]


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("tool_calls", JSON_VALUE, nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_steps.c.run_id, _steps.c.step, _steps.c.kind, _steps.c.tool,
                  _steps.c.tool_args, _steps.c.tool_result).where(_steps.c.tool.is_not(None))
    ).all()  # fmt: skip
    for row in rows:
        conn.execute(
            _steps.update()
            .where(_steps.c.run_id == row.run_id, _steps.c.step == row.step)
            .values(tool_calls=_one_call(row))
        )
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("tool_result")
        batch.drop_column("tool_args")
        batch.drop_column("tool")
    op.create_table(
        "step_drafts",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("model_output", sa.Text(), nullable=False),
        sa.Column("tool_calls", JSON_VALUE, nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "tool_results",
        sa.Column("run_id", sa.String(), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("call_id", sa.String(), primary_key=True),
        sa.Column("result", JSON_VALUE, nullable=True),
        sa.Column("error", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tool_results")
    op.drop_table("step_drafts")
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("tool", sa.String(), nullable=True))
        batch.add_column(sa.Column("tool_args", JSON_VALUE, nullable=True))
        batch.add_column(sa.Column("tool_result", JSON_VALUE, nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_steps.c.run_id, _steps.c.step, _steps.c.tool_calls).where(
            _steps.c.tool_calls.is_not(None)
        )
    ).all()
    for row in rows:
        calls = row.tool_calls or []
        if not calls:
            continue
        first = calls[0]  # the old schema kept one call per step
        conn.execute(
            _steps.update()
            .where(_steps.c.run_id == row.run_id, _steps.c.step == row.step)
            .values(tool=first.get("name"), tool_args=first.get("args"),
                    tool_result=first.get("result"))
        )  # fmt: skip
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("tool_calls")
