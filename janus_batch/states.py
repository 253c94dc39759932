"""Job and item states, and the transitions allowed between them: the table that
`janus_batch.lifecycle` takes every UPDATE's allowed source states from."""

from __future__ import annotations

from enum import StrEnum


class ItemStatus(StrEnum):
    """State of one item (one image to caption, or one prompt to render)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    """Not finished within its job's completion window (`janus_batch.expiry`)."""


class JobStatus(StrEnum):
    """State of a job. `cancelling` (a cancel) and `expiring` (its completion window is
    over) last while workers drain running chunks."""

    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    EXPIRING = "expiring"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETING = "deleting"
    """A DELETE (or retention) is removing its objects; its rows go last. Nothing revives it."""
    EXPIRED = "expired"


class JobKind(StrEnum):
    """What a job does."""

    CAPTION = "caption"
    GENERATE = "generate"


JOB_FINAL = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
)
"""Where a job ends (a retry may send a succeeded, failed or expired one back to running)."""

JOB_LIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
"""Jobs whose items are handed out to workers."""

STOPPED_ITEMS: dict[JobStatus, ItemStatus] = {
    JobStatus.CANCELLING: ItemStatus.CANCELLED,
    JobStatus.CANCELLED: ItemStatus.CANCELLED,
    JobStatus.EXPIRING: ItemStatus.EXPIRED,
    JobStatus.EXPIRED: ItemStatus.EXPIRED,
}
"""Jobs being stopped (or stopped), and what their items still pending or running become: a
chunk of such a job starts nothing, a running item ends before its next pass."""
JOB_STOPPING = frozenset(STOPPED_ITEMS)

_ITEM_TRANSITIONS: dict[ItemStatus, frozenset[ItemStatus]] = {
    ItemStatus.PENDING: frozenset(
        {ItemStatus.RUNNING, ItemStatus.CANCELLED, ItemStatus.FAILED, ItemStatus.EXPIRED}
    ),
    # running -> pending is the sweeper taking back an expired lease.
    ItemStatus.RUNNING: frozenset(
        {
            ItemStatus.SUCCEEDED,
            ItemStatus.FAILED,
            ItemStatus.PENDING,
            ItemStatus.CANCELLED,
            ItemStatus.EXPIRED,
        }
    ),
    ItemStatus.SUCCEEDED: frozenset(),
    # failed | expired -> pending is a retry of the job (POST /v1/jobs/{id}/retry).
    ItemStatus.FAILED: frozenset({ItemStatus.PENDING}),
    ItemStatus.CANCELLED: frozenset(),
    ItemStatus.EXPIRED: frozenset({ItemStatus.PENDING}),
}

_JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.FINALIZING,
            JobStatus.CANCELLING,
            JobStatus.EXPIRING,
            JobStatus.FAILED,
        }
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.FINALIZING, JobStatus.CANCELLING, JobStatus.EXPIRING, JobStatus.FAILED}
    ),
    JobStatus.CANCELLING: frozenset({JobStatus.FINALIZING, JobStatus.CANCELLED}),
    # expiring: the completion window is over; running chunks drain, then finalize
    JobStatus.EXPIRING: frozenset({JobStatus.FINALIZING}),
    JobStatus.FINALIZING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}
    ),
    # succeeded | failed | expired -> running: a retry sent the job's items back to work.
    # any final state -> deleting: committed before the first object is removed.
    JobStatus.SUCCEEDED: frozenset({JobStatus.RUNNING, JobStatus.DELETING}),
    JobStatus.FAILED: frozenset({JobStatus.RUNNING, JobStatus.DELETING}),
    JobStatus.CANCELLED: frozenset({JobStatus.DELETING}),
    JobStatus.EXPIRED: frozenset({JobStatus.RUNNING, JobStatus.DELETING}),
    JobStatus.DELETING: frozenset(),
}


def job_sources(new: JobStatus) -> frozenset[JobStatus]:
    """Every state from which a job may move to `new` (for conditional UPDATEs)."""
    return frozenset(old for old, targets in _JOB_TRANSITIONS.items() if new in targets)


def item_sources(new: ItemStatus) -> frozenset[ItemStatus]:
    """Every state from which an item may move to `new` (for conditional UPDATEs)."""
    return frozenset(old for old, targets in _ITEM_TRANSITIONS.items() if new in targets)


JOB_RETRYABLE = job_sources(JobStatus.RUNNING) & JOB_FINAL
"""The final states from which a job may be retried (succeeded, failed, expired)."""
