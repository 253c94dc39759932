"""The Celery tasks: thin wrappers that unpack ids and call the pipeline functions.

Every task takes the job id first (Flower shows it in the task's args) and carries ids
only, never payloads. Names come from `janus_batch.constants`, so the API sends by name
without importing this module.
"""

from __future__ import annotations

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from janus_batch import constants, webhooks
from janus_batch.storage import TransientStorageError
from worker.caption import CaptionHandler
from worker.chunk import dispatch_job as dispatch_pipeline
from worker.chunk import run_chunk
from worker.context import current_context
from worker.expand import expand_source as expand_pipeline
from worker.finalize import finalize_job as finalize_pipeline
from worker.generate import GenerateHandler
from worker.sources import TransientSourceError
from worker.sweeper import sweep as sweep_pipeline

# A transient database error (a deadlock, a dropped connection, a locked SQLite file) before
# a chunk's work is recorded: Celery retries the task with backoff instead of dropping the
# message. Re-running is harmless: claims and state changes are conditional.
RETRY_DB = {
    "autoretry_for": (OperationalError,),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(name=constants.CAPTION_CHUNK_TASK, **RETRY_DB)
def caption_chunk(job_id: str, item_ids: list[int]) -> None:
    """Caption one chunk of a job's items."""
    run_chunk(current_context(), CaptionHandler(), job_id, item_ids)


@shared_task(name=constants.GENERATE_CHUNK_TASK, **RETRY_DB)
def generate_chunk(job_id: str, item_ids: list[int]) -> None:
    """Generate the images of one chunk of a job's items."""
    run_chunk(current_context(), GenerateHandler(), job_id, item_ids)


# Expanding a source and writing a job's manifests talk to storage: storage down (or an S3
# source throttling) retries them with backoff for up to ~25 minutes instead of failing the
# job; past that the sweeper sends them again (stalled expansion, stuck finalizing).
RETRY_STORAGE = {
    **RETRY_DB,
    "autoretry_for": (OperationalError, TransientStorageError, TransientSourceError),
    "retry_backoff_max": 30,
    "max_retries": 50,
}


@shared_task(name=constants.EXPAND_SOURCE_TASK, **RETRY_STORAGE)
def expand_source(job_id: str) -> None:
    """Turn a job's S3 prefix or manifest into items, enqueued as they are inserted."""
    expand_pipeline(current_context(), job_id)


@shared_task(name=constants.FINALIZE_JOB_TASK, **RETRY_STORAGE)
def finalize_job(job_id: str) -> None:
    """Write a job's results.jsonl / errors.jsonl and set its final status."""
    finalize_pipeline(current_context(), job_id)


@shared_task(
    name=constants.SEND_WEBHOOK_TASK,
    bind=True,
    max_retries=None,
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_kwargs={"max_retries": 5},
)
def send_webhook(self: Task, job_id: str, event: int, first_attempt: int = 1) -> str | None:
    """POST one terminal status of a job to its webhook; a failed attempt is sent again
    after a backoff (a new message with a countdown), up to JANUS_BATCH_WEBHOOK_MAX_ATTEMPTS.
    `first_attempt`: the number of this message's first attempt (the sweeper re-sends a
    lost delivery numbered after its last recorded attempt)."""
    ctx = current_context()
    attempt = first_attempt + self.request.retries
    result = webhooks.deliver(ctx.settings, ctx.storage, job_id, event, attempt)
    if result is not None and result.retry:
        raise self.retry(countdown=webhooks.backoff(ctx.settings, attempt))
    return result.state.value if result is not None else None


@shared_task(name=constants.DISPATCH_JOB_TASK, **RETRY_DB)
def dispatch_job(job_id: str) -> int:
    """Dispatch a job's next chunks (its deferred items, once their wait is over)."""
    return dispatch_pipeline(current_context(), job_id)


@shared_task(name=constants.SWEEP_TASK)
def sweep() -> dict[str, int]:
    """Re-enqueue lost work, retire poison pills, unstick finalization (Celery beat)."""
    return sweep_pipeline(current_context())
