"""SQL tables: the source of truth for every job and item.

The schema is created only by the Alembic migrations in `migrations/`; keep both in step.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from janus_batch.states import ItemStatus, JobStatus

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the tables use."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_id(prefix: str) -> str:
    """A short random id such as `job_3f9c...` (prefix + 24 hex chars)."""
    return f"{prefix}_{secrets.token_hex(12)}"


class Base(DeclarativeBase):
    """Declarative base of all tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Job(Base):
    """One submitted job: its kind, parameters, counters and output location."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_owner_label", "owner", "label"),
        Index("ix_jobs_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    model: Mapped[str] = mapped_column(String(512))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    output_prefix: Mapped[str] = mapped_column(String(1024))
    expanded: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Fingerprint of the request an idempotency key is bound to (a replay must match it)."""
    waiting_since: Mapped[datetime | None] = mapped_column(nullable=True)
    """Set while items wait out a transient error (storage down); cleared by a success."""
    waiting_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The user's short name for the job (filterable)."""
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    """The user's own string keys and values (`metadata` in the API)."""
    retry_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Retries of the job's failed items; also numbers its terminal statuses (webhooks)."""
    retried_at: Mapped[datetime | None] = mapped_column(nullable=True)
    processed_before: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Items processed before the last retry, left out of the rate since started_at."""
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    """End of the job's completion window: items not finished by then become expired."""
    webhook_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """pending | retrying | delivered | failed: the delivery of the last terminal status."""
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    webhook_last_at: Mapped[datetime | None] = mapped_column(nullable=True)
    webhook_response: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """HTTP status of the last attempt (None if no answer came)."""
    webhook_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, default=0)
    expired: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @hybrid_property
    def done(self) -> int:
        """Items in a final state (also a SQL expression: `Job.done >= Job.total`)."""
        return self.succeeded + self.failed + self.cancelled + self.expired


class Item(Base):
    """One unit of work: an image to caption or a prompt to render `n` times."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "idx", name="uq_items_job_idx"),
        # a job's running items and its dispatched / undispatched pending ones, in idx order
        Index("ix_items_job_dispatch", "job_id", "status", "enqueued_at", "idx"),
        Index("ix_items_job_status_idx", "job_id", "status", "idx"),
        Index("ix_items_status_lease", "status", "lease_until"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Attempts that ended in a transient error (deferred): not counted as poison."""
    attempt_base: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Attempts made before the item was last retried (failed -> pending): not poison either."""
    not_before: Mapped[datetime | None] = mapped_column(nullable=True)
    """A deferred item is not dispatched again before this time."""
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApiKey(Base):
    """An API key; only its SHA-256 hash is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Signs the webhooks of this key's jobs; made on first use."""
    max_outstanding_items: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Quotas (`janus_batch.quotas`): NULL takes the setting's default, 0 is unlimited."""
    jobs_per_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    upload_bytes_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    """Where this key's jobs are POSTed on each terminal status when a job names no URL."""


class File(Base):
    """An uploaded file (an image or a JSONL manifest) kept in storage under `inputs/`."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_owner_sha256", "owner", "sha256"),
        Index("ix_files_owner_created", "owner", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(40))
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(16))
    storage_key: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
