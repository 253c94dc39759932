"""The job object, built from its row in one place: the API answers it (`api.views`, which
checks it against its `JobPublic` schema and adds what only a live request knows) and a
webhook posts it (`janus_batch.webhooks`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from janus_batch.constants import ERRORS_NAME, RESULTS_NAME
from janus_batch.expiry import format_window, window_of
from janus_batch.models import Job, as_utc
from janus_batch.states import JOB_FINAL
from janus_batch.storage import Storage


def counts(job: Job, running: int) -> dict[str, int]:
    """Items by state: final counters from the job row, running from a COUNT, the rest
    pending."""
    done = job.done
    return {
        "total": job.total,
        "pending": max(0, job.total - done - running),
        "running": running,
        "succeeded": job.succeeded,
        "failed": job.failed,
        "cancelled": job.cancelled,
        "expired": job.expired or 0,
    }


def rate_and_eta(job: Job, now: datetime | None = None) -> tuple[float | None, float | None]:
    """Items processed (succeeded + failed) per second since the job (or its last retry)
    started, and the seconds left at that rate. The ETA is None while unknown (not started,
    nothing processed yet, or a source still being expanded so the total is not known); 0
    once final."""
    rate = None
    if job.started_at is not None:
        end = as_utc(job.finished_at) if job.finished_at else (now or datetime.now(UTC))
        elapsed = (end - as_utc(job.started_at)).total_seconds()
        processed = job.succeeded + job.failed - (job.processed_before or 0)
        if elapsed > 0 and processed > 0:
            rate = processed / elapsed
    if job.status in JOB_FINAL:
        return rate, 0.0
    if rate and job.expanded:
        remaining = job.total - job.done
        return rate, max(0, remaining) / rate
    return rate, None


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def completion_window(job: Job) -> str | None:
    """The length of the job's window (`24h`), from its submit or last retry to its
    deadline; None if it never expires."""
    if job.expires_at is None:
        return None
    window = window_of(job.expires_at, job.retried_at or job.created_at)
    return format_window(window.total_seconds())


def webhook(job: Job) -> dict[str, Any] | None:
    """Where the job's terminal statuses are posted, and how the last delivery went."""
    if not job.webhook_url:
        return None
    return {
        "url": job.webhook_url,
        "state": job.webhook_state,
        "attempts": job.webhook_attempts or 0,
        "last_attempt_at": _utc(job.webhook_last_at),
        "last_response": job.webhook_response,
        "last_error": job.webhook_error,
    }


def job_object(
    job: Job,
    running: int,
    storage: Storage,
    *,
    results_url: str | None,
    errors_url: str | None,
) -> dict[str, Any]:
    """The job as the API shows it (the fields of `api.schemas.JobPublic` a row gives)."""
    rate, eta = rate_and_eta(job)
    prefix = job.output_prefix
    return {
        "id": job.id,
        "object": "job",
        "kind": job.kind,
        "status": job.status,
        "label": job.label,
        "metadata": job.meta or {},
        "model": job.model,
        "params": job.params or {},
        "source": job.source,
        "counts": counts(job, running),
        "expanded": job.expanded,
        "created_at": as_utc(job.created_at),
        "started_at": _utc(job.started_at),
        "finished_at": _utc(job.finished_at),
        "items_per_second": rate,
        "eta_seconds": eta,
        "output": {
            "prefix": storage.uri(prefix),
            "results": storage.uri(f"{prefix}/{RESULTS_NAME}"),
            "errors": storage.uri(f"{prefix}/{ERRORS_NAME}"),
            "results_url": results_url,
            "errors_url": errors_url,
        },
        "error": job.error,
        "priority": job.priority or 0,
        "retries": job.retry_count or 0,
        "retried_at": _utc(job.retried_at),
        "webhook": webhook(job),
        "expires_at": _utc(job.expires_at),
        "completion_window": completion_window(job),
    }
