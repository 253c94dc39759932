"""Job counters and the hand-off to finalization, shared by the worker and the API.

Counters are bumped in the same transaction as the item updates they count; the move to
`finalizing` is a conditional UPDATE, so exactly one caller wins and enqueues finalization.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from janus_batch.models import Job, utcnow
from janus_batch.states import JobStatus, job_sources


def bump_counts(
    session: Session, job_id: str, *, succeeded: int = 0, failed: int = 0, cancelled: int = 0
) -> None:
    """Add to a job's final-state counters (no-op when all are zero)."""
    if not (succeeded or failed or cancelled):
        return
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            succeeded=Job.succeeded + succeeded,
            failed=Job.failed + failed,
            cancelled=Job.cancelled + cancelled,
            updated_at=utcnow(),
        )
    )


def mark_running(session: Session, job_id: str) -> None:
    """queued -> running, stamping started_at (only the first caller changes anything)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, started_at=utcnow(), updated_at=utcnow())
    )


def try_start_finalizing(session: Session, job_id: str) -> bool:
    """Move the job to `finalizing` if every item is final and expansion is over.

    Returns True for exactly one caller; that caller enqueues the finalize task.
    """
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(list(job_sources(JobStatus.FINALIZING))),
            Job.expanded.is_(True),
            Job.succeeded + Job.failed + Job.cancelled >= Job.total,
        )
        .values(status=JobStatus.FINALIZING, updated_at=utcnow())
    )
    return result.rowcount == 1
