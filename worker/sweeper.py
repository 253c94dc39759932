"""The sweeper: finds work that fell through the cracks and hands it out again.

Run by Celery beat every `settings.sweep_interval` (task `janus.sweep`) or directly with
`sweep(ctx)`. Each run, in bounded batches:

1. items `running` past their lease (worker killed or lost) go back to `pending` and are
   re-enqueued; after `MAX_ATTEMPTS` claims they fail instead (poison-pill protection), and
   those of a cancelling job are cancelled;
2. items `pending` for `stale_pending_seconds` while their kind's Redis queue is empty (so
   their message was lost: an unstarted message would still sit in the list) are re-enqueued;
3. jobs `finalizing` for over `STUCK_FINALIZING` get their finalize task again;
4. jobs not yet expanded and idle for `stale_pending_seconds` get their expand task again;
5. jobs whose items are all final but that never moved to `finalizing` (a crash between a
   commit and the hand-off) move now, and finalize is enqueued;
6. jobs `cancelling` and idle for `stale_pending_seconds` with no item running, that were
   never expanded (cancelled before their expand task ran, and that task lost) or still
   hold pending items (their chunk messages lost): pending items are cancelled, expansion
   is closed, and the job goes to finalization.

Every change is a conditional UPDATE, so a sweep racing a worker never counts twice. Each run
ends by setting the `janus_queue_depth` gauge from the length of every queue.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import and_, or_, select, update

from janus_batch import constants as c
from janus_batch import metrics
from janus_batch.db import session_scope
from janus_batch.models import Item, Job, utcnow
from janus_batch.progress import bump_counts, try_start_finalizing
from janus_batch.queue import CHUNK_QUEUES, chunked, send_chunk, send_control
from janus_batch.states import ItemStatus, JobKind, JobStatus
from worker.claim import MAX_ATTEMPTS, cancel_all_pending
from worker.context import Context

log = logging.getLogger(__name__)

BATCH = 5000
"""Most items (or jobs) one step handles per run; the next run takes the rest."""
STUCK_FINALIZING = timedelta(minutes=2)
POISON_ERROR = (
    f"worker lost {MAX_ATTEMPTS} times while processing this item "
    "(the process was killed or crashed)"
)
QUEUES = [c.CAPTION_QUEUE, c.GENERATE_QUEUE, c.CONTROL_QUEUE]
LIVE_JOBS = (JobStatus.QUEUED, JobStatus.RUNNING)
STOPPING = (JobStatus.CANCELLING, JobStatus.CANCELLED)


def sweep(ctx: Context, now: datetime | None = None) -> dict[str, int]:
    """One sweeper run; returns what it did, by step."""
    now = now or utcnow()
    counts = {
        **requeue_expired(ctx, now),
        "requeued_pending": requeue_lost(ctx, now),
        "refinalized": resend_finalize(ctx, now),
        "reexpanded": resend_expand(ctx, now),
        "finalizing_started": start_finalizing(ctx),
        "cancel_finished": finish_cancelled(ctx, now),
    }
    if any(counts.values()):
        log.info("sweep: %s", counts)
    record_queue_depths(ctx)
    return counts


def record_queue_depths(ctx: Context) -> dict[str, int]:
    """Set the queue depth gauge from LLEN of every queue (after this sweep's re-enqueues);
    a Redis error is logged, not raised: the sweep's work is done by then."""
    client = redis.Redis.from_url(ctx.settings.redis_url)
    try:
        return metrics.record_queue_depths(client, QUEUES, ctx.settings.queue_prefix)
    except redis.RedisError as exc:
        log.warning("sweep: queue depths not recorded: %s", exc)
        return {}
    finally:
        client.close()


def _finalize_if_done(ctx: Context, job_ids: set[str]) -> None:
    for job_id in sorted(job_ids):
        with session_scope(ctx.database_url) as session:
            won = try_start_finalizing(session, job_id)
        if won:
            log.info("job=%s all items final: finalize enqueued by the sweeper", job_id)
            send_control(ctx.app, c.FINALIZE_JOB_TASK, job_id)


def _enqueue(ctx: Context, pending: dict[tuple[str, str], list[int]], why: str, size: int) -> None:
    for (job_id, kind), ids in pending.items():
        for chunk in chunked(ids, size):
            send_chunk(ctx.app, kind, job_id, chunk)
        log.info("job=%s re-enqueued %d items (%s)", job_id, len(ids), why)


def _lease_verdict(row: Any, now: datetime) -> tuple[str, dict[str, Any]]:
    """What becomes of an item whose lease expired: (step, values to set)."""
    if row.status in STOPPING:
        values = {"status": ItemStatus.CANCELLED, "error": "job cancelled", "finished_at": now}
        return "lease_cancelled", values
    if row.attempts >= MAX_ATTEMPTS:
        return "poisoned", {"status": ItemStatus.FAILED, "error": POISON_ERROR, "finished_at": now}
    return "requeued_leases", {"status": ItemStatus.PENDING, "enqueued_at": now}


def requeue_expired(ctx: Context, now: datetime) -> dict[str, int]:
    """Step 1: expired leases back to pending (or failed / cancelled), re-enqueued.

    An item lost more than once goes back in a chunk of its own: if it is the one that kills
    workers, it stops taking its chunk-mates down with it before it is retired.
    """
    counts = {"requeued_leases": 0, "poisoned": 0, "lease_cancelled": 0}
    pending: dict[tuple[str, str], list[int]] = defaultdict(list)
    isolated: dict[tuple[str, str], list[int]] = defaultdict(list)
    touched: set[str] = set()
    with session_scope(ctx.database_url) as session:
        rows = session.execute(
            select(Item.id, Item.job_id, Item.idx, Item.attempts, Job.kind, Job.status)
            .join(Job, Job.id == Item.job_id)
            .where(Item.status == ItemStatus.RUNNING, Item.lease_until < now)
            .order_by(Item.id)
            .limit(BATCH)
        ).all()
        for row in rows:
            step, values = _lease_verdict(row, now)
            changed = session.execute(
                update(Item)
                .where(
                    Item.id == row.id,
                    Item.status == ItemStatus.RUNNING,
                    Item.attempts == row.attempts,
                    Item.lease_until < now,
                )
                .values(lease_until=None, **values)
            ).rowcount
            if not changed:
                continue
            counts[step] += 1
            if step == "requeued_leases":
                target = isolated if row.attempts >= MAX_ATTEMPTS - 1 else pending
                target[(row.job_id, row.kind)].append(row.id)
                continue
            log.info("job=%s idx=%d %s: %s", row.job_id, row.idx, values["status"], values["error"])
            failed = int(step == "poisoned")
            bump_counts(session, row.job_id, failed=failed, cancelled=1 - failed)
            touched.add(row.job_id)
    _enqueue(ctx, pending, "lease expired", ctx.settings.chunk_size)
    _enqueue(ctx, isolated, "lease expired again: one item per chunk", 1)
    _finalize_if_done(ctx, touched)
    return counts


def queue_length(ctx: Context, kind: str) -> int:
    """Messages waiting in the Redis list of `kind`'s queue (honouring the key prefix)."""
    key = f"{ctx.settings.queue_prefix}{CHUNK_QUEUES[JobKind(kind)]}"
    client = redis.Redis.from_url(ctx.settings.redis_url)
    try:
        return int(client.llen(key))
    finally:
        client.close()


def requeue_lost(ctx: Context, now: datetime) -> int:
    """Step 2: long-pending items whose queue is empty lost their message: re-enqueue."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    total = 0
    for kind in JobKind:
        if queue_length(ctx, kind):
            continue
        pending: dict[tuple[str, str], list[int]] = defaultdict(list)
        with session_scope(ctx.database_url) as session:
            rows = session.execute(
                select(Item.id, Item.job_id)
                .join(Job, Job.id == Item.job_id)
                .where(
                    Job.kind == kind,
                    Job.status.in_(LIVE_JOBS),
                    Item.status == ItemStatus.PENDING,
                    Item.enqueued_at < cutoff,
                )
                .order_by(Item.id)
                .limit(BATCH)
            ).all()
            for row in rows:
                changed = session.execute(
                    update(Item)
                    .where(
                        Item.id == row.id,
                        Item.status == ItemStatus.PENDING,
                        Item.enqueued_at < cutoff,
                    )
                    .values(enqueued_at=now)
                ).rowcount
                if changed:
                    pending[(row.job_id, kind)].append(row.id)
        _enqueue(ctx, pending, "message lost", ctx.settings.chunk_size)
        total += sum(len(ids) for ids in pending.values())
    return total


def _stale_jobs(ctx: Context, condition: Any, cutoff: datetime, now: datetime) -> list[str]:
    """Ids of jobs matching `condition` idle since `cutoff`, touched so the next run waits."""
    with session_scope(ctx.database_url) as session:
        ids = session.scalars(
            select(Job.id).where(condition, Job.updated_at < cutoff).limit(BATCH)
        ).all()
        touched = []
        for job_id in ids:
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, condition, Job.updated_at < cutoff)
                .values(updated_at=now)
            ).rowcount
            if changed:
                touched.append(job_id)
    return touched


def resend_finalize(ctx: Context, now: datetime) -> int:
    """Step 3: jobs stuck in finalizing get their finalize task again."""
    ids = _stale_jobs(ctx, Job.status == JobStatus.FINALIZING, now - STUCK_FINALIZING, now)
    for job_id in ids:
        log.info("job=%s stuck in finalizing: finalize re-sent", job_id)
        send_control(ctx.app, c.FINALIZE_JOB_TASK, job_id)
    return len(ids)


def resend_expand(ctx: Context, now: datetime) -> int:
    """Step 4: jobs whose expansion stalled get their expand task again (it resumes)."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    condition = and_(Job.status.in_(LIVE_JOBS), Job.expanded.is_(False))
    ids = _stale_jobs(ctx, condition, cutoff, now)
    for job_id in ids:
        log.info("job=%s expansion stalled: expand re-sent", job_id)
        send_control(ctx.app, c.EXPAND_SOURCE_TASK, job_id)
    return len(ids)


def start_finalizing(ctx: Context) -> int:
    """Step 5: jobs whose items are all final move to finalizing (finalize enqueued)."""
    with session_scope(ctx.database_url) as session:
        ids = session.scalars(
            select(Job.id)
            .where(
                Job.status.in_((*LIVE_JOBS, JobStatus.CANCELLING)),
                Job.expanded.is_(True),
                Job.succeeded + Job.failed + Job.cancelled >= Job.total,
            )
            .limit(BATCH)
        ).all()
    won = 0
    for job_id in ids:
        with session_scope(ctx.database_url) as session:
            if not try_start_finalizing(session, job_id):
                continue
        won += 1
        log.info("job=%s all items final but not finalizing: finalize enqueued", job_id)
        send_control(ctx.app, c.FINALIZE_JOB_TASK, job_id)
    return won


def _has_items(status: ItemStatus) -> Any:
    return select(Item.id).where(Item.job_id == Job.id, Item.status == status).exists()


def finish_cancelled(ctx: Context, now: datetime) -> int:
    """Step 6: idle cancelling jobs with nothing running but something left open (never
    expanded, or pending items) are closed: pending items cancelled, expanded, finalized."""
    cutoff = now - timedelta(seconds=ctx.settings.stale_pending_seconds)
    condition = and_(
        Job.status == JobStatus.CANCELLING,
        ~_has_items(ItemStatus.RUNNING),
        or_(Job.expanded.is_(False), _has_items(ItemStatus.PENDING)),
    )
    finished = 0
    for job_id in _stale_jobs(ctx, condition, cutoff, now):
        with session_scope(ctx.database_url) as session:
            n = cancel_all_pending(session, job_id)
            session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.CANCELLING)
                .values(expanded=True)
            )
            won = try_start_finalizing(session, job_id)
        finished += 1
        log.info(
            "job=%s cancelled and idle: %d pending items cancelled, expansion closed", job_id, n
        )
        if won:
            send_control(ctx.app, c.FINALIZE_JOB_TASK, job_id)
    return finished
