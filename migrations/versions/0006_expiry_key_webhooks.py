"""Expiry and a webhook URL per key.

Jobs: `expires_at` (the end of the job's completion window; NULL: never expires) with an
index for the sweeper's scan, and an `expired` counter beside succeeded/failed/cancelled.
API keys: `webhook_url`, the URL a key's jobs are POSTed to when they name none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("expired", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_jobs_expires_at", "jobs", ["expires_at"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_url")
    op.drop_index("ix_jobs_expires_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("expired")
        batch.drop_column("expires_at")
