"""The index a dispatch reads: a job's items by status, dispatched or not, in idx order.

`take_dispatch` counts a job's open items (running, and pending with a chunk message) and
takes its next undispatched pending ones in idx order. On (job_id, status) alone both read
every pending item of the job, so each dispatch of a job a million items long scanned them
all (one per inserted page and per finished chunk). (job_id, status, enqueued_at, idx)
reads only the open ones and the next undispatched ones; it replaces (job_id, status), a
prefix of it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_items_job_dispatch", "items", ["job_id", "status", "enqueued_at", "idx"])
    op.drop_index("ix_items_job_status", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.drop_index("ix_items_job_dispatch", table_name="items")
