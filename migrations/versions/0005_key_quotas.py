"""Quotas per API key: outstanding items, jobs per minute, upload bytes per day.

API keys: one nullable column per limit (NULL: the setting's default applies; 0: unlimited).
Files: an index on (owner, created_at) for the bytes a key uploaded in the last day.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LIMITS = ("max_outstanding_items", "jobs_per_minute", "upload_bytes_per_day")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for name in LIMITS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
    op.create_index("ix_files_owner_created", "files", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_files_owner_created", table_name="files")
    with op.batch_alter_table("api_keys") as batch:
        for name in reversed(LIMITS):
            batch.drop_column(name)
