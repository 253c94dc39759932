"""Finalizing a job: write its manifests, then set its final status (and hand its webhook,
if any, to the send task). Safe to run twice; a retried job is finalized again at its new
end, its manifests rewritten from the rows.

`results.jsonl` has one self-contained line per succeeded item (custom_id, idx, input, the
caption or images, model, params, status); `errors.jsonl` one line per failed, cancelled or
expired item (custom_id, idx, input, error, status); `results.parquet` one row per item,
whatever its status, in row groups (`worker.results_table`: key, custom_id, the caption
columns or image keys and seeds, model, params, status, error), for a trainer to read. All
three are written (even when empty) to temporary files, streamed from the items in idx order
a page at a time (flat memory), in one pass, then uploaded under `<output_prefix>/`. Their
content depends only on the rows, so a second run writes the same bytes (on S3 but for the
signatures of the images' presigned `url`s, valid JANUS_BATCH_RESULT_URL_EXPIRES seconds). A
WebDataset job also gets one captions sidecar per input shard (`worker.sidecars`); a job
writing WebDataset output shards has the shards no result points to deleted
(`worker.shards.delete_orphans`: left by a chunk that died after its upload). The lines come
from `janus_batch.results`, the same functions the API uses to stream a running job's
partial results, so both always agree. An error that a later run would meet again (anything
but a transient storage or database error, which the task retries) ends the job `failed`
with the error, never left in `finalizing` for the sweeper to re-send forever.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from janus_batch import lifecycle, shards
from janus_batch.constants import ERRORS_NAME, RESULTS_NAME, SEND_WEBHOOK_TASK
from janus_batch.db import session_scope
from janus_batch.inputs import shown_text
from janus_batch.items import iter_items
from janus_batch.models import Job
from janus_batch.queue import send_control
from janus_batch.results import (
    ERROR_STATUSES,
    RESULT_STATUSES,
    encode_line,
    error_line,
    presigner,
    result_line,
)
from janus_batch.states import JobStatus
from janus_batch.storage import TransientStorageError
from worker import results_table
from worker.context import Context
from worker.shards import delete_orphans, list_shards, referenced_shards
from worker.sidecars import write_sidecars

log = logging.getLogger(__name__)

PAGE = 1000
CONTENT_TYPE = "application/x-ndjson"
TRANSIENT = (OperationalError, InterfaceError, TransientStorageError)
"""Errors a later finalize may not meet (the task retries them); any other ends the job."""
MAX_ERROR = 1000


def final_status(job: Job) -> tuple[JobStatus, str | None]:
    """The status a finalizing job ends in, and an error to record if it has none yet.

    - `cancelled` if any item was cancelled (a cancel was requested while items were left);
    - `expired` if any item expired (the completion window ended while items were left);
    - `failed` if the job already carries an error (its source could not be read or listed,
      or held nothing);
    - `cancelled` if the job has no items and no error: it was cancelled before its source
      produced any (every other way of ending up without items records an error);
    - `failed` if no item succeeded (all failed);
    - `succeeded` otherwise: a partly failed job succeeds, its `failed` count shows the rest.
    """
    if job.cancelled > 0:
        return JobStatus.CANCELLED, None
    if job.expired:
        return JobStatus.EXPIRED, None
    if job.error:
        return JobStatus.FAILED, None
    if job.succeeded == 0:
        if job.total == 0:
            return JobStatus.CANCELLED, None
        return JobStatus.FAILED, lifecycle.all_failed_error(job.failed)
    return JobStatus.SUCCEEDED, None


def finalize_job(ctx: Context, job_id: str) -> str | None:
    """Write the manifests of a `finalizing` job and move it to its final status.

    A job already final is left alone; a job not yet finalizing is skipped (the sweeper or
    the last chunk sends finalize again when it is ready). Returns the job's status.
    """
    with session_scope(ctx.database_url) as session:
        job = session.get(Job, job_id)
    if job is None:
        log.warning("job=%s finalize skipped: the job does not exist", job_id)
        return None
    if job.status != JobStatus.FINALIZING:
        log.info("job=%s finalize skipped: job is %s", job_id, job.status)
        return job.status
    failure = None
    try:
        write_manifests(ctx, job)
        write_sidecars(ctx, job, on_page=_touch_finalizing(job.id))
    except TRANSIENT:
        raise  # retried by the task, then re-sent by the sweeper
    except Exception as exc:  # would fail the same way every time: the job ends failed
        failure = f"finalize failed: {type(exc).__name__}: {shown_text(str(exc))[:MAX_ERROR]}"
        log.exception("job=%s %s", job_id, failure)
    with session_scope(ctx.database_url) as session:
        fresh = session.get(Job, job_id)
        if fresh is None:  # deleted meanwhile
            return None
        job = fresh
        status, error = final_status(job)
        if failure is not None:
            status, error = JobStatus.FAILED, "; ".join(filter(None, [job.error or error, failure]))
        changed = lifecycle.finish(session, job_id, status, error, replace=failure is not None)
        webhook = lifecycle.queue_webhook(session, job_id) if changed else None
    if changed:
        log.info(
            "job=%s %s: %d succeeded, %d failed, %d cancelled, %d expired of %d",
            job_id,
            status,
            job.succeeded,
            job.failed,
            job.cancelled,
            job.expired,
            job.total,
        )
        if webhook is not None:
            _send_webhook(ctx, job_id, webhook)
        return status
    log.info("job=%s finalized by another worker", job_id)
    return None


def _send_webhook(ctx: Context, job_id: str, event: int) -> None:
    """Hand the webhook POST of this terminal status to its own control task: a slow or
    unreachable receiver never holds finalize. A broker that refuses the message leaves the
    delivery `pending` on the job (logged); the job's end stands."""
    try:
        send_control(ctx.app, SEND_WEBHOOK_TASK, job_id, event)
    except Exception as exc:
        log.error("job=%s webhook delivery %d not enqueued: %s", job_id, event, exc)


def _touch_finalizing(job_id: str) -> Callable[[Session], None]:
    """Each page read touches the job's updated_at, so the sweeper does not take a long
    manifest write for a lost finalize and start a second one."""
    return lambda session: lifecycle.touch(session, job_id, only=JobStatus.FINALIZING)


def write_manifests(ctx: Context, job: Job) -> tuple[int, int]:
    """Write results.jsonl, errors.jsonl and results.parquet of `job` to storage; returns
    the line counts of the first two."""
    prefix = job.output_prefix.rstrip("/")
    counts = {"results": 0, "errors": 0}
    presign = presigner(ctx.storage, ctx.settings.result_url_expires)
    sharded = shards.images_per_shard(job.params) is not None
    referenced: set[str] = set()  # one key per shard: a thousandth of the images
    # listed before the items are read: a shard uploaded meanwhile is never deleted
    listed: set[str] = set()
    if sharded:
        try:
            listed = list_shards(ctx.storage, job)
        except Exception as exc:  # cleanup only: the manifests do not depend on it
            log.warning("job=%s shards not listed, orphans left in place: %s", job.id, exc)
    with tempfile.TemporaryDirectory(prefix="janus-finalize-") as tmp:
        results_path, errors_path = Path(tmp) / RESULTS_NAME, Path(tmp) / ERRORS_NAME
        table_path = Path(tmp) / results_table.NAME
        with (
            open(results_path, "wb") as results,
            open(errors_path, "wb") as errors,
            results_table.ResultsTable(table_path, job, row_group=PAGE) as table,
        ):
            for item in iter_items(
                ctx.database_url, job.id, page_size=PAGE, on_page=_touch_finalizing(job.id)
            ):
                table.add(item)
                if item.status in RESULT_STATUSES:
                    if sharded:
                        referenced |= referenced_shards(item.result)
                    results.write(encode_line(result_line(job, item, presign)))
                    counts["results"] += 1
                elif item.status in ERROR_STATUSES:
                    errors.write(encode_line(error_line(item)))
                    counts["errors"] += 1
                else:
                    log.warning("job=%s idx=%d is %s at finalize", job.id, item.idx, item.status)
        ctx.storage.put_file(f"{prefix}/{RESULTS_NAME}", results_path, CONTENT_TYPE)
        ctx.storage.put_file(f"{prefix}/{ERRORS_NAME}", errors_path, CONTENT_TYPE)
        ctx.storage.put_file(
            f"{prefix}/{results_table.NAME}", table_path, results_table.CONTENT_TYPE
        )
    if sharded:  # best effort: an orphan costs storage, never a result (the job is done)
        try:
            delete_orphans(ctx.storage, job, listed, referenced)
        except Exception as exc:
            log.warning("job=%s orphan shards not deleted (left in place): %s", job.id, exc)
    log.info(
        "job=%s wrote %s (%d lines) and %s (%d lines)",
        job.id,
        RESULTS_NAME,
        counts["results"],
        ERRORS_NAME,
        counts["errors"],
    )
    return counts["results"], counts["errors"]
