"""The job service: create, read, list and cancel jobs.

Transports (the HTTP API, tests) call these with an owner; a job is only ever seen by its
owner. Errors are InvalidInput / TooLarge (bad request), JobNotFound, JobConflict and
QueueUnavailable; the API turns them into HTTP codes.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from janus_batch import constants as c
from janus_batch.db import session_scope
from janus_batch.files import file_resolver, referenced_file_ids
from janus_batch.inputs import (
    InvalidInput,
    check_items,
    check_source,
    check_text,
    parse_params,
)
from janus_batch.items import add_items
from janus_batch.models import Item, Job, new_id, utcnow
from janus_batch.progress import bump_counts, try_start_finalizing
from janus_batch.queue import send_control
from janus_batch.settings import Settings
from janus_batch.states import JOB_FINAL, ItemStatus, JobKind, JobStatus, job_sources

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"job_[0-9a-f]{24}")
MAX_IDEMPOTENCY_KEY = 255


class JobNotFound(LookupError):
    """No job with this id belongs to the caller."""


class JobConflict(Exception):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""


class QueueUnavailable(Exception):
    """The job could not be enqueued (Redis down); it was marked failed."""


def create_job(
    settings: Settings,
    app: Celery,
    *,
    owner: str,
    kind: str,
    params: dict[str, Any] | None = None,
    items: list[Any] | None = None,
    source: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Validate everything, write the job, enqueue its work; returns (job, created).

    Inline items are inserted and enqueued in chunks before returning; a source is stored on
    the job and expanded by the `expand_source` task. With an idempotency key already used
    by this owner, the existing job is returned and nothing is created (`created` False).
    """
    db = settings.resolved_database_url()
    if kind not in set(JobKind):
        raise InvalidInput("kind", f"must be one of {', '.join(JobKind)}")
    parsed = parse_params(kind, params, max_n=settings.max_n)
    if items is not None and source is not None:
        raise InvalidInput("items", "give either items or source, not both")
    if items is None and source is None:
        raise InvalidInput("items", "give either items (inline) or source (s3_prefix or manifest)")
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
        if existing := _find_idempotent(db, owner, idempotency_key):
            return existing, False
    new_items = None
    job_source = None
    if items is not None:
        new_items = check_items(
            items,
            kind,
            parsed,
            max_items=settings.max_inline_items,
            max_prompt_chars=settings.max_prompt_chars,
            max_n=settings.max_n,
            resolve_file=file_resolver(db, owner, referenced_file_ids(items, "image"), "image"),
        )
    else:
        ids = referenced_file_ids([source], "manifest")
        job_source = check_source(
            source, kind, resolve_file=file_resolver(db, owner, ids, "manifest")
        )

    job_id = new_id("job")
    job = Job(
        id=job_id,
        owner=owner,
        kind=kind,
        status=JobStatus.QUEUED.value,
        model=settings.model,
        params=parsed.model_dump(),
        source=job_source,
        idempotency_key=idempotency_key,
        output_prefix=f"jobs/{job_id}",
        expanded=False,
        created_at=utcnow(),
    )
    try:
        with session_scope(db) as session:
            session.add(job)
    except IntegrityError:
        if idempotency_key is not None and (
            existing := _find_idempotent(db, owner, idempotency_key)
        ):
            return existing, False  # a concurrent request with the same key won the race
        raise
    try:
        if new_items is not None:
            add_items(db, app, job_id, kind, new_items, chunk_size=settings.chunk_size)
            _end_expansion(db, app, job_id)
        else:
            send_control(app, c.EXPAND_SOURCE_TASK, job_id)
    except Exception as exc:
        _abandon(db, job_id, f"could not enqueue the job: {exc}")
        raise QueueUnavailable(f"could not enqueue job {job_id}: {exc}") from exc
    what = f"{len(new_items)} items" if new_items is not None else f"source {job_source}"
    log.info("job=%s created: %s %s for %s", job_id, kind, what, owner)
    return get_job(db, owner, job_id), True


def _check_idempotency_key(key: str) -> None:
    field = "Idempotency-Key"
    if not key.strip():
        raise InvalidInput(field, "must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(field, f"is longer than {MAX_IDEMPOTENCY_KEY} characters")
    check_text(key, field)


def _find_idempotent(db: str, owner: str, key: str) -> Job | None:
    with session_scope(db) as session:
        return session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))


def _end_expansion(db: str, app: Celery, job_id: str) -> None:
    """Mark every item inserted; if workers already finished them all, finalize now."""
    with session_scope(db) as session:
        session.execute(update(Job).where(Job.id == job_id).values(expanded=True))
        won = try_start_finalizing(session, job_id)
    if won:
        send_control(app, c.FINALIZE_JOB_TASK, job_id)


def _abandon(db: str, job_id: str, reason: str) -> None:
    """Fail a job whose work could not be enqueued, freeing its idempotency key for a retry."""
    try:
        with session_scope(db) as session:
            n = _cancel_pending(session, job_id)
            bump_counts(session, job_id, cancelled=n)
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status=JobStatus.FAILED,
                    error=reason,
                    idempotency_key=None,
                    expanded=True,
                    finished_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        log.error("job=%s failed: %s", job_id, reason)
    except Exception:
        log.exception("job=%s could not be marked failed after: %s", job_id, reason)


def _cancel_pending(session: Any, job_id: str) -> int:
    result = session.execute(
        update(Item)
        .where(Item.job_id == job_id, Item.status == ItemStatus.PENDING)
        .values(status=ItemStatus.CANCELLED, error="job cancelled", finished_at=utcnow())
    )
    return result.rowcount


def get_job(db: str, owner: str, job_id: str) -> Job:
    """The owner's job; JobNotFound otherwise (also for other owners' jobs)."""
    if JOB_ID_RE.fullmatch(job_id):
        with session_scope(db) as session:
            job = session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))
        if job is not None:
            return job
    raise JobNotFound(f"no job {job_id!r}")


def running_counts(db: str, job_ids: list[str]) -> dict[str, int]:
    """How many items of each job are running right now (a COUNT on the items index)."""
    if not job_ids:
        return {}
    with session_scope(db) as session:
        rows = session.execute(
            select(Item.job_id, func.count())
            .where(Item.job_id.in_(job_ids), Item.status == ItemStatus.RUNNING)
            .group_by(Item.job_id)
        )
        return {job_id: n for job_id, n in rows}


def encode_cursor(job: Job) -> str:
    """An opaque cursor for the position right after `job` in a newest-first listing."""
    raw = json.dumps([as_utc(job.created_at).isoformat(), job.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) from a cursor; InvalidInput naming `after` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, job_id = json.loads(raw)
        if not JOB_ID_RE.fullmatch(job_id):
            raise ValueError(job_id)
        return as_utc(datetime.fromisoformat(created)), job_id
    except (ValueError, TypeError):
        raise InvalidInput("after", "is not a cursor returned by this API") from None


def list_jobs(
    db: str,
    owner: str,
    *,
    limit: int = 20,
    after: str | None = None,
    status: str | None = None,
    kind: str | None = None,
) -> tuple[list[Job], bool]:
    """The owner's jobs, newest first, after a cursor; returns (page, has_more)."""
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if after:
        created, job_id = decode_cursor(after)
        query = query.where(
            (Job.created_at < created) | ((Job.created_at == created) & (Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    with session_scope(db) as session:
        jobs = list(session.scalars(query))
    return jobs[:limit], len(jobs) > limit


def list_items(
    db: str,
    owner: str,
    job_id: str,
    *,
    after: int | None = None,
    limit: int = 100,
    status: str | None = None,
) -> tuple[list[Item], bool]:
    """A job's items in index order after index `after`; returns (page, has_more)."""
    get_job(db, owner, job_id)
    query = select(Item).where(Item.job_id == job_id)
    if after is not None:
        query = query.where(Item.idx > after)
    if status is not None:
        query = query.where(Item.status == status)
    query = query.order_by(Item.idx).limit(limit + 1)
    with session_scope(db) as session:
        items = list(session.scalars(query))
    return items[:limit], len(items) > limit


def cancel_job(db: str, app: Celery, owner: str, job_id: str) -> Job:
    """Cancel the job's pending items and move it to `cancelling` (running items finish).

    Finished items are kept. When nothing is left running, the job goes to finalizing and
    the finalize task is enqueued. JobConflict for a job that is already final/finalizing.
    """
    job = get_job(db, owner, job_id)
    if job.status in JOB_FINAL or job.status == JobStatus.FINALIZING:
        raise JobConflict(f"job {job_id} is already {job.status}; it cannot be cancelled")
    with session_scope(db) as session:
        # Items before the job row: the worker's claim locks in that order too, so the two
        # cannot deadlock on PostgreSQL. A job that is already final has no pending items.
        n = _cancel_pending(session, job_id)
        moved = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(list(job_sources(JobStatus.CANCELLING))))
            .values(status=JobStatus.CANCELLING, updated_at=utcnow())
        ).rowcount
        current = session.scalar(select(Job.status).where(Job.id == job_id))
        if not moved and current != JobStatus.CANCELLING:
            raise JobConflict(f"job {job_id} is already {current}; it cannot be cancelled")
        bump_counts(session, job_id, cancelled=n)
        won = try_start_finalizing(session, job_id)
    log.info("job=%s cancelled %d pending items", job_id, n)
    if won:
        send_control(app, c.FINALIZE_JOB_TASK, job_id)
    return get_job(db, owner, job_id)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; they are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
