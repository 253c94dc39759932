"""SQL rows -> response bodies (counts, ETA, output locations and download URLs)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis
from fastapi import Request

from api.schemas import FilePublic, ItemPublic, JobPublic, Waiting
from janus_batch import fleet
from janus_batch.constants import ERRORS_NAME, RESULTS_NAME
from janus_batch.failures import describe
from janus_batch.jobview import job_object
from janus_batch.models import File, Item, Job, as_utc
from janus_batch.settings import get_settings
from janus_batch.states import JOB_FINAL, ItemStatus
from janus_batch.storage import Storage


def _utc(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def _download_url(
    job: Job, storage: Storage, request: Request, name: str, errors: bool
) -> str | None:
    """A presigned URL of the final manifest on S3; else the API route that streams it."""
    if job.status in JOB_FINAL:
        signed = storage.presigned_url(f"{job.output_prefix}/{name}")
        if signed:
            return signed
    url = str(request.url_for("get_results", job_id=job.id))
    return f"{url}?errors=true" if errors else url


def job_public(job: Job, running: int, storage: Storage, request: Request) -> JobPublic:
    """The API view of a job: the job object (`janus_batch.jobview`, the one a webhook
    posts) with download URLs through this API and what holds it up."""
    view = JobPublic.model_validate(
        job_object(
            job,
            running,
            storage,
            results_url=_download_url(job, storage, request, RESULTS_NAME, errors=False),
            errors_url=_download_url(job, storage, request, ERRORS_NAME, errors=True),
        )
    )
    if job.waiting_since is not None and job.status not in JOB_FINAL:
        view.waiting = Waiting(since=as_utc(job.waiting_since), reason=job.waiting_reason or "")
        view.eta_seconds = None  # the rate says nothing while storage is down
    return view


def sweeper_note(expired_leases: int, last_sweep: float | None, interval: float) -> str | None:
    """A note for a job whose items sit on expired leases while no sweeper runs to hand them
    back (None if there are none, or the sweeper ran within three intervals)."""
    if not expired_leases:
        return None
    if last_sweep is not None and time.time() - last_sweep <= 3 * interval:
        return None
    when = (
        "has never run"
        if last_sweep is None
        else (f"last ran {time.time() - last_sweep:.0f} s ago")
    )
    return (
        f"{expired_leases} items wait on expired leases (their worker stopped) and the sweeper "
        f"{when}: start the control worker with beat to hand them back"
    )


def last_sweep() -> float | None:
    """Unix time of the sweeper's last run (None if unknown or Redis does not answer)."""
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return fleet.last_sweep(client, settings.queue_prefix)
    except redis.RedisError:
        return None
    finally:
        client.close()


def item_public(item: Item) -> ItemPublic:
    """The API view of an item."""
    return ItemPublic(
        idx=item.idx,
        custom_id=item.custom_id,
        status=item.status,
        input=item.input,
        result=item.result,
        error=item.error,
        error_class=(
            describe(item.error, item.attempts)
            if item.status in (ItemStatus.FAILED, ItemStatus.EXPIRED)
            else None
        ),
        attempts=item.attempts,
        started_at=_utc(item.started_at),
        finished_at=_utc(item.finished_at),
    )


def file_public(row: File) -> FilePublic:
    """The API view of an uploaded file."""
    return FilePublic(
        id=row.id,
        filename=row.filename,
        bytes=row.bytes,
        purpose=row.purpose,
        sha256=row.sha256,
        created_at=as_utc(row.created_at),
    )


def live_consumers(queue: str) -> tuple[int | None, Waiting | None]:
    """Live workers consuming `queue` (their announcements in Redis; None if Redis does not
    answer), and, if one of them says its storage is down, since when: the job's items wait
    for it (the worker claims nothing meanwhile)."""
    client = redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=2, socket_timeout=2
    )
    try:
        found = fleet.announcements(client, get_settings().queue_prefix)
    except redis.RedisError:
        return None, None
    finally:
        client.close()
    mine = {name: body for name, body in found.items() if queue in body["queues"]}
    down = sorted(
        (body["storage_down_since"], name)
        for name, body in mine.items()
        if isinstance(body.get("storage_down_since"), (int, float))
    )
    waiting = None
    if down:  # worker names are the operator's business (/readyz): counted, not named
        waiting = Waiting(
            since=datetime.fromtimestamp(down[0][0], UTC),
            reason=f"storage unreachable from {len(down)} of {len(mine)} workers: work "
            "resumes by itself when it answers",
        )
    return len(mine), waiting


def live_view(job: Job, db: str, storage: Storage, request: Request) -> JobPublic:
    """The view of one job with what holds it up (for single-job responses and pages): the
    live workers of its queue (its kind's, of its model), `waiting` when their storage is
    down, and a note when its items sit on expired leases with no sweeper running (no ETA
    then: it would never come)."""
    from janus_batch import jobs  # the job service (keeps this module's imports light)
    from janus_batch.queue import chunk_queue

    running = jobs.running_counts(db, [job.id]).get(job.id, 0)
    view = job_public(job, running, storage, request)
    if job.status in JOB_FINAL:
        return view
    queue = chunk_queue(job.kind, job.model, get_settings().resolved_default_model())
    view.live_workers, storage_down = live_consumers(queue)
    if view.waiting is None and storage_down is not None:
        view.waiting, view.eta_seconds = storage_down, None
    expired = jobs.expired_lease_count(db, job.id) if running else 0
    note = sweeper_note(expired, last_sweep() if expired else None, get_settings().sweep_interval)
    if note:
        view.notes.append(note)
        view.eta_seconds = None
    return view
