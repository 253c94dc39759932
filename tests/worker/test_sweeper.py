"""The sweeper: expired leases, poison pills, lost messages, stuck finalization, cancelled jobs
left open."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from janus_batch import constants, lifecycle
from janus_batch.db import session_scope
from janus_batch.jobs import cancel_job
from janus_batch.lifecycle import POISON_ERROR
from janus_batch.models import Item, Job, utcnow
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    clear_queues,
    create_job,
    die_holding,
    drain,
    get_items,
    get_job,
    peek_messages,
    pop_message,
    queue_key,
    read_jsonl,
    redis_client,
)
from worker.chunk import run_chunk
from worker.generate import GenerateHandler
from worker.sweeper import sweep


def test_expired_lease_is_requeued_and_completed_once(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])
    _, chunk = pop_message(ctx, "janus.generate")
    die_holding(ctx, job_id, chunk[1])

    counts = sweep(ctx)
    assert counts["requeued_leases"] == 3
    assert peek_messages(ctx, "janus.generate") == [(constants.GENERATE_CHUNK_TASK, chunk)]
    assert {r.status for r in get_items(ctx, job_id)} == {ItemStatus.PENDING}
    assert sweep(ctx)["requeued_leases"] == 0

    drain(ctx)
    assert not run_chunk(ctx, GenerateHandler(), *chunk)  # the old message, redelivered late
    job = get_job(ctx, job_id)
    assert (job.status, job.total, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 3, 3, 0)
    assert [r.attempts for r in get_items(ctx, job_id)] == [2, 2, 2]
    assert len(read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))) == 3


def test_poison_pill_is_isolated_then_fails_after_three_attempts(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["fine", "kills the worker", "fine too"])
    _, chunk = pop_message(ctx, "janus.generate")
    ids = chunk[1]
    die_holding(ctx, job_id, ids)  # attempt 1: the whole chunk goes down
    assert sweep(ctx)["requeued_leases"] == 3
    assert pop_message(ctx, "janus.generate") == (constants.GENERATE_CHUNK_TASK, [job_id, ids])
    die_holding(ctx, job_id, ids)  # attempt 2: again; now each item gets its own chunk
    assert sweep(ctx)["requeued_leases"] == 3
    singles = [pop_message(ctx, "janus.generate") for _ in ids]
    assert [args for _, args in singles] == [[job_id, [i]] for i in ids]
    assert pop_message(ctx, "janus.generate") is None

    run_chunk(ctx, GenerateHandler(), *singles[0][1])  # innocent chunk-mates complete
    run_chunk(ctx, GenerateHandler(), *singles[2][1])
    die_holding(ctx, job_id, singles[1][1][1])  # attempt 3 of the poison pill
    counts = sweep(ctx)
    assert (counts["poisoned"], counts["requeued_leases"]) == (1, 0)
    bad = get_items(ctx, job_id)[1]
    assert (bad.status, bad.attempts, bad.error) == (ItemStatus.FAILED, 3, POISON_ERROR)

    drain(ctx)  # the sweeper moved the job to finalizing
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 2, 1)
    assert [r.attempts for r in get_items(ctx, job_id)] == [3, 3, 3]
    [error] = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert (error["idx"], error["error"]) == (1, POISON_ERROR)


def test_expired_lease_of_a_cancelling_job_is_cancelled(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    _, chunk = pop_message(ctx, "janus.generate")
    die_holding(ctx, job_id, chunk[1])
    with session_scope(ctx.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLING))
    assert sweep(ctx)["lease_cancelled"] == 2
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.cancelled) == (JobStatus.CANCELLED, 2)


def test_lost_pending_message_is_requeued(make_ctx: Any) -> None:
    ctx = make_ctx(stale_pending_seconds="60")
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    other = create_job(ctx, JobKind.GENERATE, ["c"])
    later = utcnow() + timedelta(seconds=61)

    assert sweep(ctx, now=later)["requeued_pending"] == 0  # messages still in the queue
    clear_queues(ctx)  # a Redis restart loses them
    assert sweep(ctx)["requeued_pending"] == 0  # not stale yet
    assert sweep(ctx, now=later)["requeued_pending"] == 3
    assert sorted(args[0] for _, args in peek_messages(ctx, "janus.generate")) == sorted(
        [job_id, other]
    )
    assert sweep(ctx, now=later)["requeued_pending"] == 0  # enqueued_at was bumped

    drain(ctx)
    for job in (get_job(ctx, job_id), get_job(ctx, other)):
        assert job.status == JobStatus.SUCCEEDED and job.succeeded == job.total


def test_stuck_finalizing_is_resent(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a"])
    _, chunk = pop_message(ctx, "janus.generate")
    run_chunk(ctx, GenerateHandler(), *chunk)
    assert pop_message(ctx, "janus.control") == (constants.FINALIZE_JOB_TASK, [job_id])  # and lost
    assert get_job(ctx, job_id).status == JobStatus.FINALIZING

    assert sweep(ctx)["refinalized"] == 0  # not stuck yet
    later = utcnow() + timedelta(minutes=3)
    assert sweep(ctx, now=later)["refinalized"] == 1
    assert sweep(ctx, now=later)["refinalized"] == 0
    assert peek_messages(ctx, "janus.control") == [(constants.FINALIZE_JOB_TASK, [job_id])]
    drain(ctx)
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED


def test_done_job_not_finalizing_is_moved(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a"])
    _, chunk = pop_message(ctx, "janus.generate")
    run_chunk(ctx, GenerateHandler(), *chunk)
    clear_queues(ctx)
    with session_scope(ctx.database_url) as session:  # as if the hand-off never happened
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.RUNNING))
    assert sweep(ctx)["finalizing_started"] == 1
    assert sweep(ctx)["finalizing_started"] == 0
    drain(ctx)
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED


def test_stalled_expansion_is_resent(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(stale_pending_seconds="60")
    job_id = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": f"s3://{s3_env.bucket}/none/"})
    assert sweep(ctx)["reexpanded"] == 0
    later = utcnow() + timedelta(seconds=61)
    assert sweep(ctx, now=later)["reexpanded"] == 1
    assert sweep(ctx, now=later)["reexpanded"] == 0
    assert peek_messages(ctx, "janus.control") == [(constants.EXPAND_SOURCE_TASK, [job_id])]
    drain(ctx)
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.FAILED and job.error.startswith("no images found")


def test_cancelled_job_whose_expand_was_lost_is_finished(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(stale_pending_seconds="60")
    job_id = create_job(ctx, JobKind.CAPTION, source={"s3_prefix": f"s3://{s3_env.bucket}/p/"})
    cancel_job(ctx.database_url, ctx.app, constants.LOCAL_OWNER, job_id)  # expand message then lost
    later = utcnow() + timedelta(seconds=61)

    assert sweep(ctx)["stop_finished"] == 0  # not idle long enough
    counts = sweep(ctx, now=later)
    assert (counts["stop_finished"], counts["reexpanded"]) == (1, 0)
    assert sweep(ctx, now=later)["stop_finished"] == 0
    job = get_job(ctx, job_id)
    assert (job.status, job.expanded) == (JobStatus.FINALIZING, True)
    assert peek_messages(ctx, "janus.control") == [(constants.FINALIZE_JOB_TASK, [job_id])]
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.total, job.error) == (JobStatus.CANCELLED, 0, None)


def test_cancelling_job_with_lost_pending_items_is_finished(make_ctx: Any) -> None:
    ctx = make_ctx(stale_pending_seconds="60")
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])
    _, chunk = pop_message(ctx, "janus.generate")
    with session_scope(ctx.database_url) as session:  # claimed by a live worker
        assert lifecycle.claim(session, job_id, chunk[1][:1], lease_seconds=600)
        # cancelling, but two items left pending and their message lost
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLING))
    later = utcnow() + timedelta(seconds=120)  # stale by 60 s whatever the load

    assert sweep(ctx, now=later)["stop_finished"] == 0  # an item is still running
    assert [r.status for r in get_items(ctx, job_id)] == ["running", "pending", "pending"]
    with session_scope(ctx.database_url) as session:  # the worker finishes its item
        session.execute(
            update(Item)
            .where(Item.id == chunk[1][0])
            .values(status=ItemStatus.SUCCEEDED, lease_until=None, result={"images": []})
        )
        session.execute(update(Job).where(Job.id == job_id).values(succeeded=1))
    assert sweep(ctx, now=later)["stop_finished"] == 1
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.cancelled) == (JobStatus.CANCELLED, 1, 2)
    assert [r.status for r in get_items(ctx, job_id)] == ["succeeded", "cancelled", "cancelled"]


def test_a_job_whose_window_was_lost_gets_it_back(make_ctx: Any) -> None:
    """A chunk ended but its worker died before releasing the job's next chunk (or the broker
    lost it): nothing of the job is open any more, so the sweeper dispatches the window."""
    ctx = make_ctx(dispatch_window="1")
    job_id = create_job(ctx, JobKind.GENERATE, [f"p{i}" for i in range(20)])  # chunks of 8
    _, (_, first) = pop_message(ctx, "janus.generate")
    assert pop_message(ctx, "janus.generate") is None  # one chunk open: the window
    assert sweep(ctx)["windows_reopened"] == 0
    with session_scope(ctx.database_url) as session:  # the chunk ran, then its worker died
        claimed = lifecycle.claim(session, job_id, first, lease_seconds=60)
        outcomes = [lifecycle.Outcome(c, ItemStatus.SUCCEEDED, result={}) for c in claimed]
        lifecycle.complete(session, outcomes)

    assert sweep(ctx)["windows_reopened"] == 1
    _, (_, second) = pop_message(ctx, "janus.generate")
    rows = {row.id: row.idx for row in get_items(ctx, job_id)}
    assert [rows[i] for i in second] == list(range(8, 16))
    assert sweep(ctx)["windows_reopened"] == 0  # that chunk is open now


def test_a_failing_step_is_logged_and_the_other_steps_still_run(
    make_ctx: Any, monkeypatch: Any, caplog: Any
) -> None:
    """One step raising (here the expiry step and one job's dispatch) does not stop the
    sweep: the next steps still reopen the other job's window."""
    import worker.sweeper as sweeper

    ctx = make_ctx(dispatch_window="1")
    job_ids = [create_job(ctx, JobKind.GENERATE, [f"p{i}" for i in range(12)]) for _ in "ab"]
    for _ in job_ids:  # each job's chunk ran, then its worker died: both windows lost
        _, (_, first) = pop_message(ctx, "janus.generate")
        with session_scope(ctx.database_url) as session:
            owner = session.get(Item, first[0]).job_id
            claimed = lifecycle.claim(session, owner, first, lease_seconds=60)
            outcomes = [lifecycle.Outcome(c, ItemStatus.SUCCEEDED, result={}) for c in claimed]
            lifecycle.complete(session, outcomes)
    broken, healthy = job_ids

    def expiry_fails(*args: Any) -> int:
        raise RuntimeError("expiry step broken")

    dispatch_next = sweeper.dispatch_next

    def dispatch_fails_for_one(settings: Any, app: Any, job_id: str, *rest: Any) -> int:
        if job_id == broken:
            raise RuntimeError("too many bind parameters")
        return dispatch_next(settings, app, job_id, *rest)

    monkeypatch.setattr(sweeper, "expire_overdue", expiry_fails)
    monkeypatch.setattr(sweeper, "dispatch_next", dispatch_fails_for_one)
    counts = sweep(ctx)

    assert "expired_jobs" not in counts
    assert counts["windows_reopened"] == 1
    _, (job_id, _) = pop_message(ctx, "janus.generate")
    assert job_id == healthy
    assert "step expired_jobs failed" in caplog.text
    assert f"job={broken} window not dispatched again" in caplog.text


def test_a_lost_message_is_found_while_other_jobs_messages_wait(make_ctx: Any) -> None:
    """The queue is not empty (another job's chunk waits in it), yet the message naming this
    job's items is gone: it is re-sent; the waiting one is not."""
    ctx = make_ctx(stale_pending_seconds="60")
    lost_job = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    waiting_job = create_job(ctx, JobKind.GENERATE, ["c"])
    _, (job_id, _) = pop_message(ctx, "janus.generate")  # the oldest message: lost_job's
    assert job_id == lost_job
    later = utcnow() + timedelta(seconds=61)
    assert sweep(ctx, now=later)["requeued_pending"] == 2
    assert sorted(args[0] for _, args in peek_messages(ctx, "janus.generate")) == sorted(
        [lost_job, waiting_job]
    )
    assert sweep(ctx, now=later)["requeued_pending"] == 0


def test_a_workers_own_retry_is_not_taken_for_a_lost_message(make_ctx: Any) -> None:
    """A chunk task that retries itself (a database error) waits in its worker as a reserved
    message with an ETA, reserved long ago: not lost. A plain reservation that old, whose
    items are still pending, is a dead worker's: its items are re-sent."""
    ctx = make_ctx(stale_pending_seconds="60")
    create_job(ctx, JobKind.GENERATE, ["a", "b"])
    prefix = ctx.settings.queue_prefix
    r = redis_client(ctx)
    raw = r.rpop(queue_key(ctx, "janus.generate"))
    message = json.loads(raw)
    reserved_long_ago = time.time() - 3600
    later = utcnow() + timedelta(seconds=61)

    def reserve(eta: str | None) -> None:
        message["headers"]["eta"] = eta
        r.hset(f"{prefix}unacked", "tag-1", json.dumps([message, "", "janus.generate"]))
        r.zadd(f"{prefix}unacked_index", {"tag-1": reserved_long_ago})

    reserve((utcnow() + timedelta(seconds=30)).isoformat())  # Celery's retry countdown
    assert sweep(ctx, now=later)["requeued_pending"] == 0
    reserve(None)
    assert sweep(ctx, now=later)["requeued_pending"] == 2
    r.delete(f"{prefix}unacked", f"{prefix}unacked_index")
