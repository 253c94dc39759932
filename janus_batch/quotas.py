"""Quotas per API key: the one place their rule lives. The job service (`jobs.create_job`,
`jobs.retry_job`) and the upload service (`files.save_upload`) call it, so every transport
gets it; over a limit it raises QuotaExceeded, which the API answers 429 with Retry-After.

    max_outstanding_items  items pending or running in the key's unfinished jobs (total - done)
    jobs_per_minute        jobs submitted in any 60 seconds (a sliding window)
    upload_bytes_per_day   bytes of new uploads in any 24 hours (duplicates are free)

The SQL tables hold the counts (no counter to drift or lose): the jobs and files rows. A key
row's own limit wins; NULL takes the setting of the same name (`JANUS_BATCH_JOBS_PER_MINUTE`,
...), which is also the limit of the single owner in open mode; 0 is unlimited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from janus_batch.models import ApiKey, File, Job, as_utc, utcnow
from janus_batch.settings import Settings
from janus_batch.states import JOB_FINAL

LIMITS = ("max_outstanding_items", "jobs_per_minute", "upload_bytes_per_day")
"""The limits' names: the ApiKey columns, the settings, the 429's `field`."""
JOB_WINDOW = timedelta(minutes=1)
UPLOAD_WINDOW = timedelta(days=1)
OUTSTANDING_RETRY_AFTER = 60
"""Seconds a client over its outstanding items is told to wait (jobs end when they end)."""


class QuotaExceeded(Exception):
    """A request would pass one of the key's limits; retry after `retry_after` seconds."""

    def __init__(self, limit: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.limit, self.retry_after = limit, max(1, retry_after)


@dataclass(frozen=True)
class Limits:
    """One owner's limits; 0 is unlimited."""

    max_outstanding_items: int
    jobs_per_minute: int
    upload_bytes_per_day: int


def limits_for(session: Session, settings: Settings, owner: str, *, lock: bool = False) -> Limits:
    """The owner's limits: its key's own, else the settings' defaults (also open mode's).
    `lock` holds the key row until the transaction ends (PostgreSQL), so one key's concurrent
    submits are counted one after the other."""
    query = select(ApiKey).where(ApiKey.id == owner)
    key = session.scalar(query.with_for_update() if lock else query)

    def pick(name: str) -> int:
        own = getattr(key, name) if key is not None else None
        return int(own if own is not None else getattr(settings, name))

    return Limits(*(pick(name) for name in LIMITS))


def outstanding_items(session: Session, owner: str) -> int:
    """Items not yet final in the owner's unfinished jobs."""
    left = Job.total - Job.done
    query = select(func.coalesce(func.sum(left), 0)).where(
        Job.owner == owner, Job.status.not_in(list(JOB_FINAL))
    )
    return int(session.scalar(query) or 0)


def check_outstanding(session: Session, limits: Limits, owner: str, adding: int) -> None:
    """QuotaExceeded when `adding` more items would pass the owner's outstanding items; called
    in the transaction that adds them (a retry: after its items went back to pending, before
    its job is live again), with the key row locked (`limits_for(lock=True)`)."""
    limit = limits.max_outstanding_items
    if not limit:
        return
    current = outstanding_items(session, owner)
    if current + adding <= limit:
        return
    raise QuotaExceeded(
        "max_outstanding_items",
        f"too many outstanding items: the key has {current:,} items pending or running in "
        f"its unfinished jobs; {adding:,} more would pass its limit of {limit:,} "
        "(max_outstanding_items). Retry when some of its jobs have finished",
        OUTSTANDING_RETRY_AFTER,
    )


def check_new_job(
    session: Session, settings: Settings, owner: str, items: int, now: datetime | None = None
) -> None:
    """Apply the limits to a new job of `items` inline items (a source job counts 1 until it
    is expanded), in the transaction that inserts it: QuotaExceeded over one."""
    limits = limits_for(session, settings, owner, lock=True)
    check_outstanding(session, limits, owner, max(1, items))
    limit = limits.jobs_per_minute
    if not limit:
        return
    now = now or utcnow()
    recent = list(
        session.scalars(
            select(Job.created_at)
            .where(Job.owner == owner, Job.created_at > now - JOB_WINDOW)
            .order_by(Job.created_at.desc())
            .limit(limit)
        )
    )
    if len(recent) < limit:
        return
    wait = as_utc(recent[-1]) + JOB_WINDOW - now  # when the oldest of the last `limit` ages out
    raise QuotaExceeded(
        "jobs_per_minute",
        f"too many jobs: the key submitted {limit:,} jobs in the last minute, its limit "
        f"(jobs_per_minute). Retry in {_seconds(wait)} s",
        _seconds(wait),
    )


def check_upload(
    session: Session, settings: Settings, owner: str, size: int, now: datetime | None = None
) -> None:
    """QuotaExceeded when a new upload of `size` bytes would pass the owner's bytes per day."""
    limit = limits_for(session, settings, owner).upload_bytes_per_day
    if not limit:
        return
    now = now or utcnow()
    since = now - UPLOAD_WINDOW
    rows = session.execute(
        select(File.created_at, File.bytes)
        .where(File.owner == owner, File.created_at > since)
        .order_by(File.created_at)
    ).all()
    used = sum(size_ for _, size_ in rows)
    if used + size <= limit:
        return
    if size > limit:
        wait = UPLOAD_WINDOW
        why = f"the file's {size:,} bytes alone are over"
    else:
        wait, freed = UPLOAD_WINDOW, 0
        for created_at, size_ in rows:  # the first upload whose ageing out makes room
            freed += size_
            if used - freed + size <= limit:
                wait = as_utc(created_at) + UPLOAD_WINDOW - now
                break
        why = f"the key uploaded {used:,} bytes in the last 24 hours; {size:,} more would pass"
    raise QuotaExceeded(
        "upload_bytes_per_day",
        f"too many bytes uploaded: {why} its limit of {limit:,} (upload_bytes_per_day). "
        f"Retry in {_seconds(wait)} s",
        _seconds(wait),
    )


def _seconds(wait: timedelta) -> int:
    return max(1, math.ceil(wait.total_seconds()))
