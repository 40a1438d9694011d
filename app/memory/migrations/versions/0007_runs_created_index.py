"""The run listing (GET /v1/runs, agentq runs list) reads runs newest first, a page at a time
after a (created_at, id) cursor: an index on those two columns lets it read one page instead
of sorting every run of the table per page.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_created_id", "runs", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_created_id", table_name="runs")
