"""/v1/jobs: submit, read, list, cancel and retry jobs; their items, results manifests and
output files."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import CeleryDep, DatabaseUrl, Owner, SettingsDep, StorageDep
from api.downloads import iter_body, job_output_key, object_response
from api.errors import HttpError, Responses, error_responses
from api.metrics import MetricsDep
from api.schemas import Deleted, ItemsPublic, JobCreate, JobPublic, JobRetry, JobsPublic
from api.views import item_public, job_public, live_view
from janus_batch import jobs
from janus_batch.constants import ERRORS_NAME, RESULTS_NAME
from janus_batch.models import Job
from janus_batch.results import iter_job_lines
from janus_batch.states import JOB_FINAL, ItemStatus, JobKind, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NDJSON = "application/x-ndjson"
_READ_CHUNK = 256 * 1024
ERRORS = error_responses(401, 404, 409, 413, 422, 503)
QUOTA = error_responses(429)
"""Over a quota of the key (`janus_batch.quotas`): submits and retries."""

JobId = Annotated[str, Path(max_length=64, description="A job id (job_...).")]


def _view(job: Job, db: str, storage: StorageDep, request: Request) -> JobPublic:
    return live_view(job, db, storage, request)


REPLAY: Responses = {
    200: {"model": JobPublic, "description": "The job created earlier with this Idempotency-Key."}
}


@router.post("", status_code=202, response_model=JobPublic, responses={**REPLAY, **ERRORS, **QUOTA})
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    settings: SettingsDep,
    owner: Owner,
    app: CeleryDep,
    storage: StorageDep,
    metrics: MetricsDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="Retry-safe key: the same key returns the same job."),
    ] = None,
) -> JobPublic:
    """Submit a job (202). Inline items are validated all up front, then inserted and
    enqueued; a `source` is expanded by a worker task. A repeated Idempotency-Key returns
    the existing job (200) and creates nothing."""
    source = body.source.model_dump(exclude_none=True) if body.source else None
    job, created = jobs.create_job(
        settings,
        app,
        owner=owner,
        kind=body.kind,
        priority=body.priority,
        params=body.params,
        items=body.items,
        source=source,
        idempotency_key=idempotency_key,
        label=body.label,
        metadata=body.metadata,
        webhook_url=body.webhook_url,
        model=body.model,
        completion_window=body.completion_window,
        expires_at=body.expires_at,
    )
    if not created:
        response.status_code = 200
    elif metrics is not None:
        metrics.jobs_submitted.labels(job.kind).inc()
        metrics.items_submitted.labels(job.kind).inc(len(body.items or ()))
    return _view(job, settings.resolved_database_url(), storage, request)


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    request: Request,
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the previous page.")
    ] = None,
    status: JobStatus | None = None,
    kind: JobKind | None = None,
    label: Annotated[
        str | None, Query(max_length=128, description="Only jobs with this label.")
    ] = None,
) -> JobsPublic:
    """Your jobs, newest first."""
    page, has_more = jobs.list_jobs(
        db, owner, limit=limit, after=after, status=status, kind=kind, label=label
    )
    running = jobs.running_counts(db, [job.id for job in page])
    return JobsPublic(
        data=[job_public(job, running.get(job.id, 0), storage, request) for job in page],
        next_cursor=jobs.encode_cursor(page[-1]) if has_more else None,
        has_more=has_more,
    )


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def get_job(
    job_id: JobId, request: Request, db: DatabaseUrl, owner: Owner, storage: StorageDep
) -> JobPublic:
    """A job with its live counts, throughput, ETA and output locations."""
    return _view(jobs.get_job(db, owner, job_id), db, storage, request)


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
def cancel_job(
    job_id: JobId,
    request: Request,
    db: DatabaseUrl,
    owner: Owner,
    app: CeleryDep,
    storage: StorageDep,
) -> JobPublic:
    """Cancel pending items (finished ones are kept); running chunks drain, then the job
    is finalized. 409 if the job is already final."""
    return _view(jobs.cancel_job(db, app, owner, job_id), db, storage, request)


@router.delete("/{job_id}", response_model=Deleted, responses=ERRORS)
def delete_job(job_id: JobId, db: DatabaseUrl, owner: Owner, storage: StorageDep) -> Deleted:
    """Delete a finished job: its results, images and manifests in storage, then its rows.
    409 while it runs (cancel it first)."""
    removed = jobs.delete_job(db, storage, owner, job_id)
    return Deleted(id=job_id, object="job.deleted", objects_removed=removed)


@router.post("/{job_id}/retry", response_model=JobPublic, responses={**ERRORS, **QUOTA})
def retry_job(
    job_id: JobId,
    request: Request,
    settings: SettingsDep,
    owner: Owner,
    app: CeleryDep,
    storage: StorageDep,
    body: JobRetry | None = None,
) -> JobPublic:
    """Retry a succeeded, failed or expired job's failed and expired items in place (all, or
    those of the error classes in `errors`): they go back to pending with full attempts, the
    job back to running (with a fresh completion window of the same length, if it had one),
    and its manifests are written again when it ends. 409 if the job is still going or
    cancelled, or has no such item."""
    job, _ = jobs.retry_job(settings, app, owner, job_id, body.errors if body else None)
    return _view(job, settings.resolved_database_url(), storage, request)


@router.get("/{job_id}/items", response_model=ItemsPublic, responses=ERRORS)
def list_items(
    job_id: JobId,
    db: DatabaseUrl,
    owner: Owner,
    after: Annotated[int | None, Query(ge=-1, le=2**31 - 1, description="Last idx seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: ItemStatus | None = None,
) -> ItemsPublic:
    """A job's items in index order."""
    page, has_more = jobs.list_items(db, owner, job_id, after=after, limit=limit, status=status)
    return ItemsPublic(
        data=[item_public(item) for item in page],
        next_cursor=str(page[-1].idx) if has_more else None,
        has_more=has_more,
    )


@router.get(
    "/{job_id}/results",
    name="get_results",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}}, **ERRORS},
)
def get_results(
    job_id: JobId,
    db: DatabaseUrl,
    owner: Owner,
    storage: StorageDep,
    errors: Annotated[bool, Query(description="The error lines instead.")] = False,
) -> StreamingResponse:
    """The results manifest (JSONL): the stored file once the job is final, else built from
    the items done so far (header `X-Partial: true`)."""
    job = jobs.get_job(db, owner, job_id)
    key = f"{job.output_prefix}/{ERRORS_NAME if errors else RESULTS_NAME}"
    if job.status in JOB_FINAL and storage.exists(key):
        return StreamingResponse(iter_body(storage.open_read(key)), media_type=NDJSON)
    partial = "false" if job.status in JOB_FINAL else "true"
    lines = iter_job_lines(db, job, errors=errors)
    return StreamingResponse(lines, media_type=NDJSON, headers={"X-Partial": partial})


@router.get("/{job_id}/files/{key:path}", responses={200: {"content": {"image/*": {}}}, **ERRORS})
def get_output_file(
    job_id: JobId, key: str, db: DatabaseUrl, owner: Owner, storage: StorageDep
) -> Response:
    """Download one output object of the job: a storage key under the job's prefix (as in
    the results lines), or a key relative to it (`images/00000000_0.png`)."""
    job = jobs.get_job(db, owner, job_id)
    full = job_output_key(job, key)
    if full is None:
        shown = key if len(key) <= 200 else key[:200] + "..."
        raise HttpError(422, f"invalid key {shown!r}", "key")
    return object_response(storage, full, missing=f"job {job_id} has no file {key!r}", field="key")
