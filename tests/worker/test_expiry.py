"""Completion windows in the worker and the sweeper: pending items of a job past its deadline
expire at once, running ones before their next pass (the cancel path), the job finalizes
`expired` with what it finished; a job done in time is not expired; a retry starts over."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from janus_batch import constants, lifecycle
from janus_batch.db import session_scope
from janus_batch.jobs import retry_job
from janus_batch.lifecycle import Outcome
from janus_batch.models import Job, as_utc, utcnow
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    FirstPassEngine,
    create_job,
    die_holding,
    drain,
    get_items,
    get_job,
    peek_messages,
    pop_message,
    read_jsonl,
)
from worker.chunk import run_chunk
from worker.context import Context
from worker.generate import GenerateHandler
from worker.sweeper import sweep

WINDOW = timedelta(hours=24)


def set_deadline(ctx: Context, job_id: str, expires_at: Any) -> None:
    """The job was submitted with a 24 h window ending at `expires_at` (the past: it is over)."""
    with session_scope(ctx.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(expires_at=expires_at, created_at=expires_at - WINDOW)
        )


def overdue_job(ctx: Context, prompts: int = 3) -> str:
    job_id = create_job(ctx, JobKind.GENERATE, [f"p{i}" for i in range(prompts)])
    set_deadline(ctx, job_id, utcnow() - timedelta(seconds=1))
    return job_id


def test_expire_job_ends_pending_items_and_counts_them(ctx: Context) -> None:
    job_id = overdue_job(ctx)
    ids = [item.id for item in get_items(ctx, job_id)]
    in_time = create_job(ctx, JobKind.GENERATE, ["q"])
    set_deadline(ctx, in_time, utcnow() + timedelta(hours=1))
    with session_scope(ctx.database_url) as session:
        assert lifecycle.claim(session, job_id, ids, lease_seconds=60) == []  # past it
        assert lifecycle.overdue_jobs(session, utcnow(), 10) == [job_id]
        assert lifecycle.expire_job(session, in_time, utcnow()) == (False, 0)
        assert lifecycle.expire_job(session, job_id, utcnow()) == (True, 3)
        assert lifecycle.expire_job(session, job_id, utcnow()) == (False, 0)  # once
        assert lifecycle.overdue_jobs(session, utcnow(), 10) == []
    job = get_job(ctx, job_id)
    assert (job.status, job.expired, job.done, job.total) == (JobStatus.EXPIRING, 3, 3, 3)
    items = get_items(ctx, job_id)
    assert {item.status for item in items} == {ItemStatus.EXPIRED}
    assert items[0].error.startswith("expired: not finished within the job's completion window")
    assert "(24h, ended " in items[0].error
    assert get_job(ctx, in_time).status == JobStatus.QUEUED


def test_a_running_chunk_expires_before_its_next_pass(make_ctx: Any, tiny_engine: Any) -> None:
    # as test_cancel_mid_chunk: a long pass wait keeps the first pass full (2 guided items)
    ctx = make_ctx(pass_wait_ms="3000")
    job_id = create_job(ctx, JobKind.GENERATE, [f"prompt {i}" for i in range(10)])  # 8 + 2
    set_deadline(ctx, job_id, utcnow() + timedelta(hours=1))
    _, first_chunk = pop_message(ctx, "janus.generate")
    # the job's deadline passes during the first pass
    engine = FirstPassEngine(
        tiny_engine, lambda: set_deadline(ctx, job_id, utcnow() - timedelta(milliseconds=1))
    )
    late = Context(ctx.settings, ctx.storage, ctx.app, engine=lambda: engine)

    counts = run_chunk(late, GenerateHandler(), *first_chunk)

    assert engine.calls == 1  # the pass under way finished; no other pass started
    assert counts == {ItemStatus.SUCCEEDED: 2, ItemStatus.EXPIRED: 6}
    job = get_job(ctx, job_id)  # the chunk's end expired the other chunk's pending items
    assert (job.status, job.succeeded, job.expired, job.failed, job.cancelled) == (
        JobStatus.FINALIZING, 2, 8, 0, 0,
    )  # fmt: skip
    drain(ctx)  # the second chunk's message is dropped harmlessly, then finalize
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.expired) == (JobStatus.EXPIRED, 2, 8)
    assert job.finished_at is not None
    assert [r.status for r in get_items(ctx, job_id)] == ["succeeded"] * 2 + ["expired"] * 8
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert [line["idx"] for line in results] == [0, 1]
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert [e["idx"] for e in errors] == list(range(2, 10))
    assert {e["status"] for e in errors} == {"expired"}
    assert all("completion window (24h, ended" in e["error"] for e in errors)


def test_the_sweeper_expires_an_overdue_job(ctx: Context) -> None:
    job_id = overdue_job(ctx)
    other = create_job(ctx, JobKind.GENERATE, ["in time"])
    set_deadline(ctx, other, utcnow() + timedelta(hours=1))

    counts = sweep(ctx)

    assert counts["expired_jobs"] == 1
    job = get_job(ctx, job_id)  # nothing was running: handed to finalization at once
    assert (job.status, job.expired) == (JobStatus.FINALIZING, 3)
    assert (constants.FINALIZE_JOB_TASK, [job_id]) in peek_messages(ctx, "janus.control")
    assert sweep(ctx)["expired_jobs"] == 0
    drain(ctx)  # its chunk message is dropped, the other job runs
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.expired) == (JobStatus.EXPIRED, 0, 3)
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert [e["status"] for e in errors] == ["expired"] * 3
    assert read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl")) == []
    assert (get_job(ctx, other).status, get_job(ctx, other).expired) == (JobStatus.SUCCEEDED, 0)


def test_a_job_done_before_its_deadline_is_not_expired(ctx: Context) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b"])
    deadline = utcnow() + timedelta(minutes=10)
    set_deadline(ctx, job_id, deadline)
    drain(ctx)
    assert sweep(ctx, now=deadline + timedelta(seconds=1))["expired_jobs"] == 0
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.expired) == (JobStatus.SUCCEEDED, 2, 0)


def test_lost_leases_and_deferrals_of_an_expiring_job_expire(ctx: Context) -> None:
    job_id = overdue_job(ctx, prompts=4)
    _, chunk = pop_message(ctx, "janus.generate")
    lost, deferred = chunk[1][:2], chunk[1][2:]
    set_deadline(ctx, job_id, utcnow() + timedelta(hours=1))  # in time while they are claimed
    die_holding(ctx, job_id, lost)
    with session_scope(ctx.database_url) as session:
        claimed = lifecycle.claim(session, job_id, deferred, lease_seconds=60)
    set_deadline(ctx, job_id, utcnow() - timedelta(seconds=1))
    with session_scope(ctx.database_url) as session:
        assert lifecycle.expire_job(session, job_id, utcnow()) == (True, 0)  # none pending
        waits = [
            Outcome(c, ItemStatus.PENDING, error="waiting: host down", delay=1) for c in claimed
        ]
        moved = lifecycle.complete(session, waits)
    assert set(moved.values()) == {ItemStatus.EXPIRED}  # not sent back to wait
    assert sweep(ctx)["lease_expired"] == 2
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.expired, job.failed) == (JobStatus.EXPIRED, 4, 0)


def test_retry_of_an_expired_job_runs_its_items_in_a_fresh_window(ctx: Context) -> None:
    job_id = overdue_job(ctx)
    sweep(ctx)
    drain(ctx)
    assert get_job(ctx, job_id).status == JobStatus.EXPIRED

    job, n = retry_job(ctx.settings, ctx.app, constants.LOCAL_OWNER, job_id)

    assert (n, job.status, job.expired) == (3, JobStatus.RUNNING, 0)
    assert as_utc(job.expires_at) - as_utc(job.retried_at) == WINDOW
    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.expired, job.retry_count) == (
        JobStatus.SUCCEEDED, 3, 0, 1,
    )  # fmt: skip
    assert read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl")) == []
