"""Runs accepted by a producer and not yet started: the record recovery reads when Redis lost
their first message (durability.accepted = "sql").

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen copies of the types in app.memory.schema at this revision.
TIMESTAMP = sa.DateTime(timezone=True)
JSON_VALUE = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    op.create_table(
        "accepted_runs",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("kwargs", JSON_VALUE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_accepted_runs_created", "accepted_runs", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_accepted_runs_created", table_name="accepted_runs")
    op.drop_table("accepted_runs")
