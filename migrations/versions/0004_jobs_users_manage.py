"""Jobs a user manages: retries of failed items, labels and metadata, webhooks.

Items: `attempt_base` (attempts made before a retry, not counted as poison). Jobs: `label`
and `metadata`, the retry count/time and the items processed before it (for the rate), the
webhook URL and the record of its last delivery. API keys: the secret that signs their
webhooks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INT0 = {"nullable": False, "server_default": "0"}


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("attempt_base", sa.Integer(), **INT0))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("label", sa.String(128), nullable=True))
        batch.add_column(sa.Column("metadata", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("retry_count", sa.Integer(), **INT0))
        batch.add_column(sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("processed_before", sa.Integer(), **INT0))
        batch.add_column(sa.Column("webhook_url", sa.String(2048), nullable=True))
        batch.add_column(sa.Column("webhook_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("webhook_attempts", sa.Integer(), **INT0))
        batch.add_column(sa.Column("webhook_last_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("webhook_response", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("webhook_error", sa.Text(), nullable=True))
    op.create_index("ix_jobs_owner_label", "jobs", ["owner", "label"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_secret")
    op.drop_index("ix_jobs_owner_label", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        for name in (
            "webhook_error",
            "webhook_response",
            "webhook_last_at",
            "webhook_attempts",
            "webhook_state",
            "webhook_url",
            "processed_before",
            "retried_at",
            "retry_count",
            "metadata",
            "label",
        ):
            batch.drop_column(name)
    with op.batch_alter_table("items") as batch:
        batch.drop_column("attempt_base")
