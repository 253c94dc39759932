"""The job service: create, read, list, cancel and retry jobs.

Transports (the HTTP API, tests) call these with an owner; a job is only ever seen by its
owner. Errors are InvalidInput / TooLarge (bad request), JobNotFound, JobConflict and
QuotaExceeded (`janus_batch.quotas`: over a limit of the owner's key); the API turns them
into HTTP codes. A dependency that is down raises its own error (SQLAlchemy's,
Redis's) before anything is committed, or not at all once the job is: the rows are the truth.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from janus_batch import expiry, failures, keys, lifecycle, quotas, served, webhooks
from janus_batch.constants import EXPAND_SOURCE_TASK, FINALIZE_JOB_TASK
from janus_batch.db import session_scope
from janus_batch.files import file_resolver, referenced_file_ids
from janus_batch.inputs import (
    InvalidInput,
    check_items,
    check_request_refs,
    check_source,
    check_text,
    parse_params,
)
from janus_batch.items import NewItem, dispatch_next, insert_all
from janus_batch.models import Item, Job, as_utc, new_id, utcnow
from janus_batch.queue import send_control
from janus_batch.settings import Settings
from janus_batch.states import JOB_FINAL, JOB_RETRYABLE, ItemStatus, JobKind, JobStatus
from janus_batch.storage import Storage

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"job_[0-9a-f]{24}")
MAX_IDEMPOTENCY_KEY = 255


class JobNotFound(LookupError):
    """No job with this id belongs to the caller."""


class JobConflict(Exception):
    """The job's state does not allow the operation (e.g. cancelling a finished job)."""


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
    priority: int = 0,
    label: str | None = None,
    metadata: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    model: str | None = None,
    completion_window: Any = None,
    expires_at: Any = None,
) -> tuple[Job, bool]:
    """Validate everything, write the job, enqueue its work; returns (job, created).

    Every rule about a job is applied here, whatever the transport: parameters, items or a
    source (never both), a `model` the fleet serves (`served.resolve_model`; None: the
    default model), limits, no `s3://` reference into the service's own storage, the
    label and metadata (`check_label`, `check_metadata`), a webhook URL the egress policy
    allows (`webhooks.check_url`; without one, the owner key's URL, `keys.default_webhook_url`),
    the completion window (`completion_window` or `expires_at`, else
    JANUS_BATCH_DEFAULT_COMPLETION_WINDOW: `janus_batch.expiry`) and the owner's quotas
    (`quotas.check_new_job`, in the
    transaction that writes the job; an idempotent replay is free).
    The job and all its inline items are committed in one transaction (a crash leaves the
    whole job or nothing), then their first chunks are dispatched; a source is stored on the
    job and expanded by the `expand_source` task. With an idempotency key already used by
    this owner for the same request, the existing job is returned and nothing is created
    (`created` False); for a different request, InvalidInput naming the key.
    """
    database_url = settings.resolved_database_url()
    if idempotency_key is not None:
        _check_idempotency_key(idempotency_key)
    if isinstance(priority, bool) or not isinstance(priority, int) or not -100 <= priority <= 100:
        raise InvalidInput("priority", "must be an integer between -100 and 100")
    label = check_label(label)
    metadata = check_metadata(metadata)
    if webhook_url is not None:
        webhook_url = webhooks.check_url(settings, webhook_url)
    now = utcnow()
    window = _deadline(settings, completion_window, expires_at, now)
    request = _validate(settings, owner, kind, params, items, source)
    user = {"label": label, "metadata": metadata, "webhook_url": webhook_url, "model": model}
    user.update(window.requested or {})  # a replay names the same window (as sent)
    fingerprint = request_fingerprint(kind, params, items, source, priority, **user)
    if idempotency_key is not None and (
        existing := _find_idempotent(database_url, owner, idempotency_key, fingerprint)
    ):
        return existing, False  # even if its model is no longer served: it was accepted
    model = served.resolve_model(settings, model)
    job_id = new_id("job")
    try:
        with session_scope(database_url) as session:
            n_items = len(request.items) if request.items is not None else 0
            quotas.check_new_job(session, settings, owner, n_items)
            if webhook_url is None:  # the key's own, if it has one (kept on the job)
                webhook_url = keys.default_webhook_url(session, owner)
            job = lifecycle.create_job(
                session,
                id=job_id,
                owner=owner,
                kind=kind,
                model=model,
                params=request.params,
                source=request.source,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
                priority=priority,
                label=label,
                meta=metadata,
                webhook_url=webhook_url,
                expires_at=window.expires_at,
                output_prefix=f"jobs/{job_id}",
                created_at=now,
            )
            finalize = False
            if request.items is not None:
                insert_all(session, job_id, request.items)
                lifecycle.end_expansion(session, job_id)
                finalize = lifecycle.start_finalizing(session, job_id)  # every item invalid
            session.flush()
            session.refresh(job)
    except IntegrityError:
        if idempotency_key is not None and (
            existing := _find_idempotent(database_url, owner, idempotency_key, fingerprint)
        ):
            return existing, False  # a concurrent request with the same key won the race
        raise
    if finalize:
        try:
            send_control(app, FINALIZE_JOB_TASK, job_id)
        except Exception as exc:  # committed: the sweeper re-sends a lost finalize
            log.warning("job=%s finalize not sent yet (the sweeper will): %s", job_id, exc)
    else:
        _enqueue_work(settings, app, job_id, kind, model, request)
    what = (
        f"{len(request.items)} items" if request.items is not None else f"source {request.source}"
    )
    log.info("job=%s created: %s %s for %s", job_id, kind, what, owner)
    return job, True


def _deadline(
    settings: Settings, completion_window: Any, expires_at: Any, now: datetime
) -> expiry.Deadline:
    """The job's deadline from the request and the settings; InvalidInput naming the field."""
    default, longest = settings.completion_windows()
    try:
        return expiry.deadline(
            completion_window,
            expires_at,
            now=now,
            default_seconds=default,
            max_seconds=longest,
        )
    except expiry.WindowError as exc:
        raise InvalidInput(exc.field, str(exc)) from None


def request_fingerprint(
    kind: str,
    params: dict[str, Any] | None,
    items: list[Any] | None,
    source: dict[str, Any] | None,
    priority: int,
    **extra: Any,
) -> str:
    """SHA-256 of the request as sent (canonical JSON): what an Idempotency-Key is bound to.
    `extra` fields (label, metadata, webhook_url, model, completion_window in seconds or
    expires_at in UTC) count only when set, so the fingerprint of a request without them is
    what it always was."""
    body = {
        "kind": kind,
        "params": params or {},  # absent and empty params are the same request
        "items": items,
        "source": source,
        "priority": priority,
    }
    body.update({name: value for name, value in extra.items() if value is not None})
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class _Request:
    """A validated job request: its parameters, and its inline items or its source."""

    params: dict[str, Any]
    items: list[NewItem] | None
    source: dict[str, Any] | None


def _validate(
    settings: Settings,
    owner: str,
    kind: str,
    params: dict[str, Any] | None,
    items: list[Any] | None,
    source: dict[str, Any] | None,
) -> _Request:
    """Apply every rule about a job request; InvalidInput naming the field otherwise."""
    if kind not in set(JobKind):
        raise InvalidInput("kind", f"must be one of {', '.join(JobKind)}")
    if items is not None and source is not None:
        raise InvalidInput("items", "give either items or source, not both")
    if items is None and source is None:
        raise InvalidInput("items", "give either items (inline) or source (s3_prefix or manifest)")
    storage_url = settings.resolved_storage_url()
    # s3:// references into the service's own storage would read other users' data: refused
    # before anything else is looked at (uploads are named by file id instead).
    check_request_refs(kind, items, source, storage_url)
    parsed = parse_params(
        kind, params, max_n=settings.max_n, default_max_new_tokens=settings.max_new_tokens
    )
    database_url = settings.resolved_database_url()
    if items is not None:
        new_items = check_items(
            items,
            kind,
            parsed,
            max_items=settings.max_inline_items,
            max_prompt_chars=settings.max_prompt_chars,
            max_n=settings.max_n,
            resolve_file=file_resolver(
                database_url, owner, referenced_file_ids(items, "image"), "image"
            ),
            storage_url=storage_url,
        )
        return _Request(parsed.model_dump(), new_items, None)
    ids = referenced_file_ids([source], "manifest")
    job_source = check_source(
        source,
        kind,
        resolve_file=file_resolver(database_url, owner, ids, "manifest"),
        storage_url=storage_url,
    )
    return _Request(parsed.model_dump(), None, job_source)


def _enqueue_work(
    settings: Settings, app: Celery, job_id: str, kind: str, model: str, request: _Request
) -> None:
    """Dispatch the first chunks of committed inline items, or send the expand task.

    The job is committed (the rows are the truth): a broker that cannot take the messages
    now fails nothing. Inline items stay undispatched and the sweeper dispatches them once it
    answers; a source job's lost expand is re-sent by the sweeper once the job has been idle
    JANUS_BATCH_STALE_PENDING_SECONDS."""
    if request.items is not None:
        try:
            dispatch_next(settings, app, job_id, kind, model)
        except Exception as exc:
            log.warning("job=%s not dispatched yet (the sweeper will): %s", job_id, exc)
        return
    try:
        send_control(app, EXPAND_SOURCE_TASK, job_id)
    except Exception as exc:
        log.warning("job=%s expand not sent yet (the sweeper will): %s", job_id, exc)


MAX_LABEL = 128
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_label(label: Any) -> str | None:
    """A job's label: one line of at most MAX_LABEL printable characters (surrounding spaces
    dropped), or None; InvalidInput naming `label` otherwise."""
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidInput("label", "must be a string")
    label = label.strip()
    if not label:
        raise InvalidInput("label", "must not be empty (leave it out for none)")
    if len(label) > MAX_LABEL:
        raise InvalidInput("label", f"is longer than {MAX_LABEL} characters")
    if not label.isprintable():
        raise InvalidInput("label", "must be one line of printable characters")
    return label


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """A job's metadata: at most MAX_METADATA_KEYS string keys (1-64 characters) with string
    values (at most 512), or None; InvalidInput naming the field (`metadata.<key>`)."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata", "must be an object of string keys and values")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(
            "metadata", f"has {len(metadata)} keys; at most {MAX_METADATA_KEYS} are kept"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            raise InvalidInput(
                "metadata", f"keys are strings of 1 to {MAX_METADATA_KEY} characters"
            )
        check_text(key, "metadata")
        field = f"metadata.{key}"
        if not isinstance(value, str):
            raise InvalidInput(field, "must be a string")
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidInput(field, f"is longer than {MAX_METADATA_VALUE} characters")
        check_text(value, field)
    return dict(metadata)


def _check_idempotency_key(key: str) -> None:
    field = "Idempotency-Key"
    if not key.strip():
        raise InvalidInput(field, "must not be empty")
    if len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidInput(field, f"is longer than {MAX_IDEMPOTENCY_KEY} characters")
    check_text(key, field)


def _find_idempotent(database_url: str, owner: str, key: str, fingerprint: str) -> Job | None:
    """The owner's job created with `key`, if any; InvalidInput if it was for another request."""
    with session_scope(database_url) as session:
        job = session.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))
    if job is not None and job.request_hash not in (None, fingerprint):
        raise InvalidInput(
            "Idempotency-Key",
            f"was already used for a different request (job {job.id}); use a new key",
        )
    return job


def get_job(database_url: str, owner: str, job_id: str) -> Job:
    """The owner's job; JobNotFound otherwise (also for other owners' jobs)."""
    if JOB_ID_RE.fullmatch(job_id):
        with session_scope(database_url) as session:
            job = session.scalar(select(Job).where(Job.id == job_id, Job.owner == owner))
        if job is not None:
            return job
    raise JobNotFound(f"no job {job_id!r}")


def running_counts(database_url: str, job_ids: list[str]) -> dict[str, int]:
    """How many items of each job are running right now (a COUNT on the items index)."""
    if not job_ids:
        return {}
    with session_scope(database_url) as session:
        rows = session.execute(
            select(Item.job_id, func.count())
            .where(Item.job_id.in_(job_ids), Item.status == ItemStatus.RUNNING)
            .group_by(Item.job_id)
        )
        return {job_id: n for job_id, n in rows}


def expired_lease_count(database_url: str, job_id: str) -> int:
    """Running items of the job whose lease ran out (their worker stopped; the sweeper hands
    them back)."""
    with session_scope(database_url) as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(Item)
                .where(
                    Item.job_id == job_id,
                    Item.status == ItemStatus.RUNNING,
                    Item.lease_until < utcnow(),
                )
            )
            or 0
        )


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
    database_url: str,
    owner: str,
    *,
    limit: int = 20,
    after: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    label: str | None = None,
) -> tuple[list[Job], bool]:
    """The owner's jobs (of a status, kind, label), newest first, after a cursor; returns
    (page, has_more)."""
    query = select(Job).where(Job.owner == owner)
    if label is not None:
        query = query.where(Job.label == label.strip())
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
    with session_scope(database_url) as session:
        jobs = list(session.scalars(query))
    return jobs[:limit], len(jobs) > limit


def list_items(
    database_url: str,
    owner: str,
    job_id: str,
    *,
    after: int | None = None,
    limit: int = 100,
    status: str | tuple[str, ...] | None = None,
) -> tuple[list[Item], bool]:
    """A job's items (of a status, or of any of several) in index order after index `after`;
    returns (page, has_more)."""
    get_job(database_url, owner, job_id)
    query = select(Item).where(Item.job_id == job_id)
    if after is not None:
        query = query.where(Item.idx > after)
    if isinstance(status, tuple):
        query = query.where(Item.status.in_(status))
    elif status is not None:
        query = query.where(Item.status == status)
    query = query.order_by(Item.idx).limit(limit + 1)
    with session_scope(database_url) as session:
        items = list(session.scalars(query))
    return items[:limit], len(items) > limit


def delete_job(database_url: str, storage: Storage, owner: str, job_id: str) -> int:
    """Delete a finished job (`purge_job`): every object under its output prefix (results,
    images, manifests), then its rows. JobConflict while it is not final (cancel it first);
    a job already `deleting` (a deletion that stopped half way) is finished. Returns how many
    objects were removed."""
    job = get_job(database_url, owner, job_id)
    if job.status not in JOB_FINAL and job.status != JobStatus.DELETING:
        raise JobConflict(
            f"job {job_id} is {job.status}: it can be deleted once it ends (cancel it first)"
        )
    removed, _ = purge_job(database_url, storage, job_id, job.output_prefix)
    return removed


def purge_job(
    database_url: str, storage: Storage, job_id: str, prefix: str, limit: int | None = None
) -> tuple[int, bool]:
    """Delete a final job: moved to `deleting` (its own transaction: from then on a retry or a
    cancel is refused, so nothing writes under its prefix again), then at most `limit` of its
    objects, then, once none is left, its rows. Returns (objects removed, whether the rows
    are gone); JobConflict if the job is neither final nor deleting. A deletion cut short
    (a crash, the limit) leaves the job `deleting`: the sweeper finishes it."""
    with session_scope(database_url) as session:
        if not lifecycle.start_deleting(session, job_id):
            current = session.scalar(select(Job.status).where(Job.id == job_id))
            raise JobConflict(f"job {job_id} is {current} now; it cannot be deleted")
    removed = purge_objects(storage, prefix, limit=limit)
    if limit is not None and removed >= limit:
        return removed, False  # objects may be left: the next call goes on
    with session_scope(database_url) as session:
        gone = lifecycle.delete_job(session, job_id)
    log.info("job=%s deleted: %d objects and its rows", job_id, removed)
    return removed, gone


PURGE_PAGE = 1000


def purge_objects(storage: Storage, prefix: str, limit: int | None = None) -> int:
    """Delete the objects under `prefix/`, a listed page at a time (memory flat for millions),
    at most `limit`; returns how many."""
    removed = 0
    folder = prefix.rstrip("/") + "/"
    while limit is None or removed < limit:
        page = PURGE_PAGE if limit is None else min(PURGE_PAGE, limit - removed)
        keys = list(itertools.islice(storage.iter_keys(folder), page))
        for key in keys:
            storage.delete(key)
        removed += len(keys)
        if len(keys) < page:
            break
    return removed


def cancel_job(database_url: str, app: Celery, owner: str, job_id: str) -> Job:
    """Cancel the job's pending items and move it to `cancelling` (running items finish).

    Finished items are kept. When nothing is left running, the job goes to finalizing and
    the finalize task is enqueued. JobConflict for a job that is already final/finalizing.
    """
    job = get_job(database_url, owner, job_id)
    if job.status in (*JOB_FINAL, JobStatus.FINALIZING, JobStatus.DELETING):
        raise JobConflict(f"job {job_id} is already {job.status}; it cannot be cancelled")
    with session_scope(database_url) as session:
        cancelling, n = lifecycle.request_cancel(session, job_id)
        if not cancelling:
            current = session.scalar(select(Job.status).where(Job.id == job_id))
            raise JobConflict(f"job {job_id} is already {current}; it cannot be cancelled")
        won = lifecycle.start_finalizing(session, job_id)
    log.info("job=%s cancelled %d pending items", job_id, n)
    if won:
        send_control(app, FINALIZE_JOB_TASK, job_id)
    return get_job(database_url, owner, job_id)


def retry_job(
    settings: Settings,
    app: Celery,
    owner: str,
    job_id: str,
    errors: list[str] | None = None,
) -> tuple[Job, int]:
    """Retry the failed and expired items of a finished job in place; returns (job, items
    retried).

    The failed items that ran and the expired ones (of the error classes `errors`, or all:
    `janus_batch.failures`) go back to pending with their full attempts, the job back to
    running (its `failed` and `expired` counts down by as many) with a fresh completion
    window of the length it had (`expiry.window_of`; none if it had none), in one
    transaction, and their chunks are dispatched like new items; the job ends as any job
    does, its manifests written again. Items that failed before they ever ran (a bad input)
    are not retried. JobConflict for a job that is not succeeded, failed or expired (one
    still going must end first; a cancelled one is over), or that has no such item;
    InvalidInput naming `errors` for an unknown class or an empty list; QuotaExceeded when
    the retried items would pass the owner's outstanding items.
    """
    classes = _error_classes(errors)
    database_url = settings.resolved_database_url()
    job = get_job(database_url, owner, job_id)
    if job.status not in JOB_RETRYABLE:
        raise JobConflict(
            f"job {job_id} is {job.status}; only a succeeded, failed or expired job can be "
            "retried"
            + ("" if job.status in (*JOB_FINAL, JobStatus.DELETING) else " (wait for it to end)")
        )
    with session_scope(database_url) as session:
        limits = quotas.limits_for(session, settings, owner, lock=True)
        n = lifecycle.retry_failed(session, job_id, failures.matching(classes))
        if not n:
            raise JobConflict(_nothing_to_retry(session, job_id, classes))
        quotas.check_outstanding(session, limits, owner, n)  # over: all of it rolls back
        window = (
            expiry.window_of(job.expires_at, job.retried_at or job.created_at)
            if job.expires_at is not None
            else None
        )
        if not lifecycle.restart(session, job_id, window):  # a concurrent retry won: undo ours
            current = session.scalar(select(Job.status).where(Job.id == job_id))
            raise JobConflict(f"job {job_id} is {current} now; it cannot be retried")
    log.info(
        "job=%s retrying %d failed or expired items (%s)", job_id, n, ",".join(classes or ["all"])
    )
    try:
        dispatch_next(settings, app, job_id, job.kind, job.model)
    except Exception as exc:
        log.warning("job=%s retried items not dispatched yet (the sweeper will): %s", job_id, exc)
    return get_job(database_url, owner, job_id), n


def _error_classes(errors: list[str] | None) -> list[failures.ErrorClass] | None:
    if errors is None:
        return None
    if not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
        raise InvalidInput("errors", "must be a list of error classes")
    if not errors:
        raise InvalidInput("errors", "name at least one error class, or leave it out for all")
    try:
        return failures.parse_classes(errors)
    except ValueError as exc:
        raise InvalidInput("errors", str(exc)) from None


def _nothing_to_retry(
    session: Session, job_id: str, classes: list[failures.ErrorClass] | None
) -> str:
    """Why a retry found no item: none failed (or expired), or only bad inputs, or none of
    `classes`."""
    never_ran = (
        session.scalar(
            select(func.count())
            .select_from(Item)
            .where(Item.job_id == job_id, Item.status == ItemStatus.FAILED, Item.attempts == 0)
        )
        or 0
    )
    what = "no failed items" if classes is None else f"no failed {'/'.join(classes)} items"
    note = (
        f" ({never_ran} failed before they ran: their inputs are invalid, a retry would fail "
        "them again)"
        if never_ran
        else ""
    )
    return f"job {job_id} has {what} to retry{note}"
