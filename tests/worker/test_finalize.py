"""Finalization: manifests from the rows, the final status rule, idempotence."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import update

from janus_batch.db import session_scope
from janus_batch.items import iter_items
from janus_batch.models import Item, Job, utcnow
from janus_batch.results import iter_job_lines
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import create_job, get_job, read_jsonl
from worker.finalize import final_status, finalize_job, write_manifests


@pytest.mark.parametrize(
    ("counts", "error", "expected"),
    [
        ((3, 3, 0, 0), None, (JobStatus.SUCCEEDED, None)),
        ((3, 1, 2, 0), None, (JobStatus.SUCCEEDED, None)),
        ((3, 1, 1, 1), None, (JobStatus.CANCELLED, None)),
        ((3, 0, 0, 3), None, (JobStatus.CANCELLED, None)),
        ((3, 0, 3, 0), None, (JobStatus.FAILED, "all 3 items failed (see errors.jsonl)")),
        ((0, 0, 0, 0), None, (JobStatus.CANCELLED, None)),  # cancelled before any item
        ((0, 0, 0, 0), "no images found under s3://b/p/", (JobStatus.FAILED, None)),
        ((5, 5, 0, 0), "cannot list s3://b/p/", (JobStatus.FAILED, None)),
        ((4, 1, 1, 0, 2), None, (JobStatus.EXPIRED, None)),  # the window ended
        ((2, 0, 0, 0, 2), None, (JobStatus.EXPIRED, None)),  # before anything ran
        ((2, 0, 0, 0, 2), "cannot list s3://b/p/", (JobStatus.EXPIRED, None)),
    ],
)
def test_final_status(counts: tuple[int, ...], error: str | None, expected: Any) -> None:
    total, succeeded, failed, cancelled, *expired = counts
    job = Job(
        total=total,
        succeeded=succeeded,
        failed=failed,
        cancelled=cancelled,
        expired=expired[0] if expired else None,
        error=error,
    )
    assert final_status(job) == expected


def settle(ctx: Any, job_id: str) -> None:
    """Items 0, 2 succeeded, 1 failed, 3 cancelled; the job finalizing."""
    now = utcnow()
    results = {0: {"caption": "a cat"}, 2: {"caption": "a dog"}}
    with session_scope(ctx.database_url) as session:
        for idx, status, error in [
            (0, ItemStatus.SUCCEEDED, None), (1, ItemStatus.FAILED, "cannot read image x"),
            (2, ItemStatus.SUCCEEDED, None), (3, ItemStatus.CANCELLED, "job cancelled"),
        ]:  # fmt: skip
            session.execute(
                update(Item)
                .where(Item.job_id == job_id, Item.idx == idx)
                .values(status=status, error=error, result=results.get(idx), finished_at=now)
            )
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.FINALIZING, succeeded=2, failed=1, cancelled=1)
        )


def test_finalize_writes_manifests_once(ctx: Any) -> None:
    images = [{"image": f"s3://b/{i}.png", "custom_id": f"id-{i}", "seed": i} for i in range(4)]
    job_id = create_job(ctx, JobKind.CAPTION, images, params={"prompt": "What is it?"})
    settle(ctx, job_id)

    assert finalize_job(ctx, job_id) == JobStatus.CANCELLED
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    results_bytes = ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl")
    errors_bytes = ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl")
    results, errors = read_jsonl(results_bytes), read_jsonl(errors_bytes)
    assert results[0] == {
        "custom_id": "id-0",
        "idx": 0,
        "input": {
            "image": "s3://b/0.png",
            "uri": "s3://b/0.png",
            "prompt": "What is it?",
            "seed": 0,
        },
        "caption": "a cat",
        "model": job.model,
        "params": job.params,
        "status": "succeeded",
    }
    assert [r["idx"] for r in results] == [0, 2]
    assert errors[0] == {
        "custom_id": "id-1",
        "idx": 1,
        "input": {
            "image": "s3://b/1.png",
            "uri": "s3://b/1.png",
            "prompt": "What is it?",
            "seed": 1,
        },
        "error": "cannot read image x",
        "status": "failed",
    }
    assert (errors[1]["idx"], errors[1]["status"], errors[1]["error"]) == (
        3, "cancelled", "job cancelled",
    )  # fmt: skip
    assert len(errors) == 2
    # The same lines the API streams from SQL for partial results (one definition).
    assert b"".join(iter_job_lines(ctx.database_url, job, page_size=1)) == results_bytes
    assert b"".join(iter_job_lines(ctx.database_url, job, errors=True)) == errors_bytes

    # A second delivery changes nothing; a rerun after a crash writes the same bytes.
    assert finalize_job(ctx, job_id) == JobStatus.CANCELLED
    with session_scope(ctx.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.FINALIZING))
    ctx.storage.delete(f"jobs/{job_id}/results.jsonl")
    assert finalize_job(ctx, job_id) == JobStatus.CANCELLED
    assert ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl") == results_bytes
    assert ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl") == errors_bytes


def test_finalize_skips_a_job_not_ready(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a"])
    assert finalize_job(ctx, job_id) == JobStatus.QUEUED
    assert not ctx.storage.exists(f"jobs/{job_id}/results.jsonl")
    assert finalize_job(ctx, "job_missing") is None


def test_iter_items_pages_in_idx_order(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, [f"p{i}" for i in range(7)])
    assert [i.idx for i in iter_items(ctx.database_url, job_id, page_size=3)] == list(range(7))


def test_reading_items_keeps_a_finalizing_job_fresh_for_the_sweeper(ctx: Any) -> None:
    from datetime import timedelta

    job_id = create_job(ctx, JobKind.GENERATE, [f"p{i}" for i in range(5)])
    stale = utcnow() - timedelta(hours=1)
    with session_scope(ctx.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=JobStatus.FINALIZING, updated_at=stale)
        )
    assert write_manifests(ctx, get_job(ctx, job_id)) == (0, 0)  # reads every item
    touched = get_job(ctx, job_id).updated_at
    touched = touched if touched.tzinfo else touched.replace(tzinfo=stale.tzinfo)
    assert touched > stale + timedelta(minutes=59)
