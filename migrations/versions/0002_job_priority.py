"""Job priority, and the index that finds a job's next undispatched items.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_items_job_status_idx", "items", ["job_id", "status", "idx"])


def downgrade() -> None:
    op.drop_index("ix_items_job_status_idx", table_name="items")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("priority")
