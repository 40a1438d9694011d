"""What the run inspector shows that the store did not keep: the inference replica each step's
model call went to (steps.replica) and the traceback of the error a failed run ended with
(runs.traceback). Both are nullable: rows written before this revision have neither.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.add_column(sa.Column("replica", sa.String(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("traceback", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("traceback")
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("replica")
