from __future__ import annotations

import base64
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

import redis
from sqlalchemy import and_, or_, select

from janus_batch import fleet, jobs, lifecycle, served, webhooks
from janus_batch.constants import (
    CONTROL_QUEUE,
    EXPAND_SOURCE_TASK,
    FINALIZE_JOB_TASK,
    SEND_WEBHOOK_TASK,
)
from janus_batch.db import session_scope
from janus_batch.files import delete_file
from janus_batch.items import dispatch_next
from janus_batch.lifecycle import MAX_ATTEMPTS
from janus_batch.models import File, Item, Job, utcnow
from janus_batch.queue import chunk_queue, chunk_queues, chunked, send_chunk, send_control
from janus_batch.states import JOB_FINAL, ItemStatus, JobStatus
from worker import metrics
from worker.context import Context

log = logging.getLogger(__name__)

BATCH = 5000
"""Most items (or jobs) one step handles per run; the next run takes the rest."""
STUCK_FINALIZING = timedelta(minutes=2)
LIVE_JOBS = (JobStatus.QUEUED, JobStatus.RUNNING)
STOPPING_JOBS = (JobStatus.CANCELLING, JobStatus.EXPIRING)


def sweep(ctx: Context, now: datetime | None = None) -> dict[str, int]:
    """One sweeper run; returns what it did, by step."""
    now = now or utcnow()
    counts: dict[str, int] = {}
    for name, step in (
        ("expired_jobs", lambda: expire_overdue(ctx, now)),
        ("requeued_leases", lambda: requeue_expired(ctx, now)),
        ("requeued_pending", lambda: requeue_lost(ctx, now)),
        ("windows_reopened", lambda: reopen_windows(ctx)),
        ("refinalized", lambda: resend_finalize(ctx, now)),
        ("reexpanded", lambda: resend_expand(ctx, now)),
        ("finalizing_started", lambda: start_finalizing(ctx)),
        ("stop_finished", lambda: finish_stopped(ctx, now)),
        ("webhooks_resent", lambda: resend_webhooks(ctx, now)),
        ("retention", lambda: purge_retained(ctx, now)),
    ):
        counts.update(_run_step(name, step))
    if any(counts.values()):
        log.info("sweep: %s", counts)
    record_queue_depths(ctx)
    record_run(ctx)
    return counts


def _run_step(name: str, step: Callable[[], int | dict[str, int]]) -> dict[str, int]:
    """One step of a sweep: its counts ({name: n}, or the step's own dict). A step that
    raises is logged with its traceback and counts nothing: the other steps still run, and
    the next sweep tries it again."""
    try:
        done = step()
    except Exception:
        log.exception("sweep: step %s failed (the other steps run; the next sweep retries)", name)
        return {}
    return done if isinstance(done, dict) else {name: done}


def record_run(ctx: Context) -> None:
    """Record this successful run (Redis, for /readyz and job status; and the metric), so a
    sweeper that stopped running is noticed."""
    metrics.SWEEPER_LAST_RUN.set_to_current_time()
    client = redis.Redis.from_url(ctx.settings.redis_url)
    try:
        fleet.record_sweep(client, ctx.settings.queue_prefix)
    except redis.RedisError as exc:
        log.warning("sweep: run not recorded: %s", exc)
    finally:
        client.close()


def record_queue_depths(ctx: Context) -> dict[str, int]:
    """Set the queue depth gauge from LLEN of every queue, the chunk queues of each served
    model (`served.served_models`) and the control queue (after this sweep's re-enqueues);
    a Redis error is logged, not raised: the sweep's work is done by then."""
    settings = ctx.settings
    queues = chunk_queues(served.served_models(settings), settings.resolved_default_model())
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return metrics.record_queue_depths(client, [*queues, CONTROL_QUEUE], settings.queue_prefix)
    except redis.RedisError as exc:
        log.warning("sweep: queue depths not recorded: %s", exc)
        return {}
    finally:
        client.close()


def _finalize_if_done(ctx: Context, job_ids: set[str]) -> None:
    for job_id in sorted(job_ids):
        with session_scope(ctx.database_url) as session:
            won = lifecycle.start_finalizing(session, job_id)
        if won:
            log.info("job=%s all items final: finalize enqueued by the sweeper", job_id)
            send_control(ctx.app, FINALIZE_JOB_TASK, job_id)


Pending = dict[tuple[str, str, str], list[int]]
"""Item ids to send again by (job id, kind, model)."""


def _enqueue(ctx: Context, pending: Pending, why: str, size: int) -> None:
    for (job_id, kind, model), ids in pending.items():
        for chunk in chunked(ids, size):
            send_chunk(ctx.app, kind, job_id, chunk, model=model)
        log.info("job=%s re-enqueued %d items (%s)", job_id, len(ids), why)


def expire_overdue(ctx: Context, now: datetime) -> int:
    """Step 0: live jobs past their deadline (`expires_at`, indexed; at most BATCH per run,
    earliest first) move to expiring, their pending items expired (`lifecycle.expire_job`);
    a job with nothing running is handed to finalization at once, the others when their
    running items end (before their next pass: the workers' `JobWatch`)."""
    with session_scope(ctx.database_url) as session:
        overdue = lifecycle.overdue_jobs(session, now, BATCH)
    moved: set[str] = set()
    for job_id in overdue:
        with session_scope(ctx.database_url) as session:
            expiring, n = lifecycle.expire_job(session, job_id, now)
        if expiring:
            log.info("job=%s past its deadline: expiring, %d pending items expired", job_id, n)
            moved.add(job_id)
    _finalize_if_done(ctx, moved)
    return len(moved)


def requeue_expired(ctx: Context, now: datetime) -> dict[str, int]:
    """Step 1: expired leases back to pending (or failed / cancelled / expired), re-enqueued.

    An item lost more than once goes back in a chunk of its own: if it is the one that kills
    workers, it stops taking its chunk-mates down with it before it is retired.
    """
    with session_scope(ctx.database_url) as session:
        moved = lifecycle.requeue_expired(session, now, BATCH)
        routes = {
            job_id: (kind, model)
            for job_id, kind, model in session.execute(
                select(Job.id, Job.kind, Job.model).where(Job.id.in_({m.job_id for m in moved}))
            )
        }
    steps = {
        ItemStatus.PENDING: "requeued_leases",
        ItemStatus.FAILED: "poisoned",
        ItemStatus.CANCELLED: "lease_cancelled",
        ItemStatus.EXPIRED: "lease_expired",
    }
    counts = dict.fromkeys(steps.values(), 0)
    pending: Pending = defaultdict(list)
    isolated: Pending = defaultdict(list)
    touched: set[str] = set()
    for item in moved:
        counts[steps[item.status]] += 1
        if item.status == ItemStatus.PENDING:
            target = isolated if item.attempts >= MAX_ATTEMPTS - 1 else pending
            target[(item.job_id, *routes[item.job_id])].append(item.id)
            continue
        log.info("job=%s idx=%d lease expired: %s", item.job_id, item.idx, item.status)
        touched.add(item.job_id)
    _enqueue(ctx, pending, "lease expired", ctx.settings.chunk_size)
    _enqueue(ctx, isolated, "lease expired again: one item per chunk", 1)
    _finalize_if_done(ctx, touched)
    return counts


SCAN_LIMIT = 20_000
"""Most queued messages read to tell a lost item from a waiting one (windowed dispatch keeps
queues far shorter); past it the lost-message step of that queue's kind and model waits for
a shorter queue."""


def _message_item_ids(raw: bytes | str) -> list[int]:
    """The item ids of a chunk message as kombu keeps it in Redis: a message dict (in a
    queue's list) or [message, exchange, routing key] (in the `unacked` hash); [] if not one."""
    try:
        body = json.loads(base64.b64decode(_message(raw)["body"]))
        return [int(i) for i in body[0][1]]
    except (ValueError, KeyError, IndexError, TypeError):
        return []


def _message(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    message: dict[str, Any] = value[0] if isinstance(value, list) else value
    return message


def _eta(raw: bytes | str) -> float | None:
    """The unix time a message is scheduled for (a task's own retry, `countdown`), if any."""
    try:
        eta = _message(raw)["headers"].get("eta")
        return datetime.fromisoformat(eta).timestamp() if eta else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def in_flight_item_ids(ctx: Context, queue: str) -> set[int] | None:
    """Items named by a message waiting in `queue` (one model's queue of a kind), or
    reserved by a worker that has not acknowledged it yet (kombu's `unacked` hash and its
    delivery-time index) within the last stale_pending_seconds, or scheduled (ETA) for after
    that (a task's own retry after a database error waits in its worker as a reserved
    message): not lost. An older plain reservation whose items are still pending belongs to
    a dead worker (a live one claims at once). None when the queue is too long to read (then
    nothing of its kind and model is taken for lost)."""
    prefix = ctx.settings.queue_prefix
    key = f"{prefix}{queue}"
    since = time.time() - ctx.settings.stale_pending_seconds
    client = redis.Redis.from_url(ctx.settings.redis_url)
    found: set[int] = set()
    try:
        if int(client.llen(key)) > SCAN_LIMIT:
            return None
        for raw in client.lrange(key, 0, SCAN_LIMIT):
            found.update(_message_item_ids(raw))
        reserved = cast(
            list[tuple[bytes, float]],
            client.zrange(f"{prefix}unacked_index", 0, -1, withscores=True),
        )
        tags = [str(tag, "utf-8") for tag, _ in reserved]
        entries = client.hmget(f"{prefix}unacked", tags) if tags else []
        for (_, delivered), entry in zip(reserved, entries, strict=True):
            if entry is not None and (delivered >= since or (_eta(entry) or 0) >= since):
                found.update(_message_item_ids(entry))
    finally:
        client.close()
    return found


def requeue_lost(ctx: Context, now: datetime) -> int:
    """Step 2: items dispatched long ago, still pending, that no queued message names and no
    live worker holds, lost their message (a broker restart, a crash between the dispatch and
    the send): re-enqueue them. Checked per item, so one lost window is found even while the
    queue holds other jobs' messages. Each model's jobs are checked against its own queue
    of their kind (`chunk_queue`)."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    default = ctx.settings.resolved_default_model()
    with session_scope(ctx.database_url) as session:
        routes = session.execute(
            select(Job.kind, Job.model).where(Job.status.in_(LIVE_JOBS)).distinct()
        ).all()
    total = 0
    for kind, model in sorted(routes):
        in_flight = in_flight_item_ids(ctx, chunk_queue(kind, model, default))
        if in_flight is None:
            continue
        with session_scope(ctx.database_url) as session:
            lost = lifecycle.take_lost_pending(
                session, kind, cutoff, now, BATCH, in_flight, model=model
            )
        pending: Pending = defaultdict(list)
        for item_id, job_id in lost:
            pending[(job_id, kind, model)].append(item_id)
        _enqueue(ctx, pending, "message lost", ctx.settings.chunk_size)
        total += len(lost)
    return total


def reopen_windows(ctx: Context) -> int:
    """Step 2b: live jobs with undispatched items but no chunk open (none dispatched pending,
    none running: their window's messages were lost and their items already handed back, or
    every item waits out a transient error) get their window dispatched again."""
    dispatched = and_(Item.status == ItemStatus.PENDING, Item.enqueued_at.is_not(None))
    undispatched = lifecycle.dispatchable(utcnow())  # deferred items once their wait is over

    def has(condition: Any) -> Any:
        return select(Item.id).where(Item.job_id == Job.id, condition).exists()

    with session_scope(ctx.database_url) as session:
        stalled = session.execute(
            select(Job.id, Job.kind, Job.model)
            .where(
                Job.status.in_(LIVE_JOBS),
                has(undispatched),
                ~has(dispatched),
                ~has(Item.status == ItemStatus.RUNNING),
            )
            .limit(BATCH)
        ).all()
    sent = 0
    for job_id, kind, model in stalled:
        try:
            n = dispatch_next(ctx.settings, ctx.app, job_id, kind, model)
        except Exception:  # this job's dispatch fails: the other stalled jobs still get theirs
            log.exception("job=%s window not dispatched again (the next sweep retries)", job_id)
            continue
        if n:
            log.info("job=%s no chunk open: its window of %d items dispatched again", job_id, n)
            sent += 1
    return sent


def _stale_jobs(ctx: Context, condition: Any, cutoff: datetime, now: datetime) -> list[str]:
    """Ids of jobs matching `condition` idle since `cutoff`, touched so the next run waits."""
    with session_scope(ctx.database_url) as session:
        return lifecycle.take_stale_jobs(session, condition, cutoff, now, BATCH)


def resend_finalize(ctx: Context, now: datetime) -> int:
    """Step 3: jobs stuck in finalizing get their finalize task again."""
    ids = _stale_jobs(ctx, Job.status == JobStatus.FINALIZING, now - STUCK_FINALIZING, now)
    for job_id in ids:
        log.info("job=%s stuck in finalizing: finalize re-sent", job_id)
        send_control(ctx.app, FINALIZE_JOB_TASK, job_id)
    return len(ids)


def resend_expand(ctx: Context, now: datetime) -> int:
    """Step 4: jobs whose expansion stalled get their expand task again (it resumes)."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    condition = and_(Job.status.in_(LIVE_JOBS), Job.expanded.is_(False))
    ids = _stale_jobs(ctx, condition, cutoff, now)
    for job_id in ids:
        log.info("job=%s expansion stalled: expand re-sent", job_id)
        send_control(ctx.app, EXPAND_SOURCE_TASK, job_id)
    return len(ids)


def start_finalizing(ctx: Context) -> int:
    """Step 5: jobs whose items are all final move to finalizing (finalize enqueued)."""
    with session_scope(ctx.database_url) as session:
        ids = session.scalars(
            select(Job.id)
            .where(
                Job.status.in_((*LIVE_JOBS, *STOPPING_JOBS)),
                Job.expanded.is_(True),
                Job.done >= Job.total,
            )
            .limit(BATCH)
        ).all()
    won = 0
    for job_id in ids:
        with session_scope(ctx.database_url) as session:
            if not lifecycle.start_finalizing(session, job_id):
                continue
        won += 1
        log.info("job=%s all items final but not finalizing: finalize enqueued", job_id)
        send_control(ctx.app, FINALIZE_JOB_TASK, job_id)
    return won


def _has_items(status: ItemStatus) -> Any:
    return select(Item.id).where(Item.job_id == Job.id, Item.status == status).exists()


def finish_stopped(ctx: Context, now: datetime) -> int:
    """Step 6: idle cancelling or expiring jobs with nothing running but something left open
    (never expanded, or pending items) are closed: pending items cancelled or expired,
    expanded, finalized."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    condition = and_(
        Job.status.in_(STOPPING_JOBS),
        ~_has_items(ItemStatus.RUNNING),
        or_(Job.expanded.is_(False), _has_items(ItemStatus.PENDING)),
    )
    finished = 0
    for job_id in _stale_jobs(ctx, condition, cutoff, now):
        with session_scope(ctx.database_url) as session:
            n = lifecycle.stop_pending(session, job_id)
            lifecycle.end_expansion(session, job_id)
            won = lifecycle.start_finalizing(session, job_id)
        finished += 1
        log.info("job=%s stopped and idle: %d pending items ended, expansion closed", job_id, n)
        if won:
            send_control(ctx.app, FINALIZE_JOB_TASK, job_id)
    return finished


LOST_DELIVERY = "its message was lost: sent again by the sweeper"
GAVE_UP = "its message was lost with every attempt used: given up"


def resend_webhooks(ctx: Context, now: datetime) -> int:
    """Step 6b: webhook deliveries of final jobs left `pending` or `retrying` with nothing
    carrying them (the send failed at the job's end, the message or its delayed retry was
    lost, the task died before recording) are sent again once idle for longer than the
    longest backoff plus JANUS_BATCH_STALE_PENDING_SECONDS: each re-send is recorded as an
    attempt, so after JANUS_BATCH_WEBHOOK_MAX_ATTEMPTS the delivery ends `failed`."""
    settings = ctx.settings
    limit = settings.webhook_max_attempts
    idle = webhooks.backoff(settings, limit) + settings.stale_pending_seconds
    cutoff = now - timedelta(seconds=idle)
    condition = and_(
        Job.status.in_([s.value for s in JOB_FINAL]),
        Job.webhook_state.in_([webhooks.WebhookState.PENDING, webhooks.WebhookState.RETRYING]),
        or_(Job.webhook_last_at.is_(None), Job.webhook_last_at < cutoff),
    )
    sent = 0
    for job_id in _stale_jobs(ctx, condition, cutoff, now):
        with session_scope(ctx.database_url) as session:
            row = session.execute(
                select(Job.retry_count, Job.webhook_attempts).where(Job.id == job_id)
            ).one_or_none()
            if row is None:
                continue
            event, attempt = row[0], row[1] + 1
            over = attempt > limit
            state = webhooks.WebhookState.FAILED if over else webhooks.WebhookState.RETRYING
            error = GAVE_UP if over else LOST_DELIVERY
            recorded = lifecycle.record_webhook(session, job_id, event, state=state.value,
                                                attempts=min(attempt, limit), response=None,
                                                error=error)  # fmt: skip
        if not recorded or over:
            log.info("job=%s webhook delivery %d lost: %s", job_id, event, state)
            continue
        log.info("job=%s webhook delivery %d lost: sent again as attempt %d", job_id, event,
                 attempt)  # fmt: skip
        send_control(ctx.app, SEND_WEBHOOK_TASK, job_id, event, attempt)
        sent += 1
    return sent


PURGE_JOBS = 20
"""Most jobs one sweep deletes (their objects and rows): left `deleting`, or retained."""
PURGE_OBJECTS = 5000
"""Most stored objects one sweep deletes (a big job takes several sweeps)."""
PURGE_FILES = 200
"""Most uploaded files one sweep deletes for retention."""
STUCK_DELETING = timedelta(minutes=2)
"""A `deleting` job untouched this long is finished by the sweeper (its DELETE stopped half
way, or retention goes on with a big job)."""
UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING, JobStatus.FINALIZING)


def purge_retained(ctx: Context, now: datetime) -> dict[str, int]:
    """Step 7: deletions, in bounded batches (PURGE_*). Jobs left `deleting` (a DELETE cut
    short; a big job retention started) are finished; with JANUS_BATCH_RETENTION_DAYS,
    finished jobs and uploads older than that are deleted too: a job moved to `deleting`,
    its objects (over several sweeps for a big one), then its rows; an upload's row, then its
    object if no row shares it. An upload stays while its owner has an unfinished job
    submitted after it (one that may read it; a duplicate upload hands back the old file).
    A job or upload that cannot be deleted is logged and left for the next sweep."""
    days = ctx.settings.retention_days
    cutoff = now - timedelta(days=days) if days else None
    with session_scope(ctx.database_url) as session:
        targets = list(
            session.execute(
                select(Job.id, Job.output_prefix)
                .where(Job.status == JobStatus.DELETING, Job.updated_at < now - STUCK_DELETING)
                .order_by(Job.updated_at)
                .limit(PURGE_JOBS)
            ).all()
        )
        old_files: list[Any] = []
        if cutoff is not None:
            targets += session.execute(
                select(Job.id, Job.output_prefix)
                .where(Job.status.in_([s.value for s in JOB_FINAL]), Job.finished_at < cutoff)
                .order_by(Job.finished_at)
                .limit(PURGE_JOBS - len(targets))
            ).all()
            in_use = (
                select(Job.id)
                .where(
                    Job.owner == File.owner,
                    Job.status.in_(UNFINISHED),
                    Job.created_at >= File.created_at,
                )
                .exists()
            )
            old_files = list(
                session.execute(
                    select(File.id, File.owner)
                    .where(File.created_at < cutoff, ~in_use)
                    .limit(PURGE_FILES)
                ).all()
            )
    budget, jobs_deleted, files_deleted = PURGE_OBJECTS, 0, 0
    for job_id, prefix in targets:
        try:
            removed, gone = jobs.purge_job(ctx.database_url, ctx.storage, job_id, prefix, budget)
        except Exception as exc:  # one job must not stop the sweep
            log.warning("job=%s not deleted by the sweeper (next sweep tries again): %s",
                        job_id, exc)  # fmt: skip
            continue
        budget -= removed
        jobs_deleted += gone
        if budget <= 0:
            break  # objects left: the next sweep goes on with this job
    for file_id, owner in old_files:
        try:
            files_deleted += delete_file(ctx.database_url, ctx.storage, owner, file_id) is not None
        except Exception as exc:
            log.warning("file=%s not deleted by retention: %s", file_id, exc)
    if jobs_deleted or files_deleted:
        log.info("deletions: %d jobs and %d uploads deleted", jobs_deleted, files_deleted)
    return {"retention_jobs": jobs_deleted, "retention_files": files_deleted}
