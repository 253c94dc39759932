"""Cancelling a job while a chunk runs (the chunk stops between micro-batches), and before or
while its source is expanded (the expansion closes the job and hands it to finalization)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import update

from janus_batch import constants
from janus_batch.db import session_scope
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    CancellingEngine,
    cancel_like_the_api,
    create_job,
    drain,
    get_items,
    get_job,
    pop_message,
    read_jsonl,
)
from worker import expand, sources
from worker.chunk import run_chunk
from worker.context import Context
from worker.expand import expand_source
from worker.finalize import finalize_job
from worker.generate import GenerateHandler


def test_cancel_mid_chunk(make_ctx: Any, tiny_engine: Any) -> None:
    # the chunk's requests reach the engine one by one: a long pass wait keeps the first
    # pass full (2 guided items) however slowly a busy machine prepares them
    ctx = make_ctx(pass_wait_ms="3000")
    job_id = create_job(ctx, JobKind.GENERATE, [f"prompt {i}" for i in range(10)])  # 8 + 2
    _, first_chunk = pop_message(ctx, "janus.generate")
    engine = CancellingEngine(tiny_engine, ctx, job_id)
    cancelling_ctx = Context(ctx.settings, ctx.storage, ctx.app, engine=lambda: engine)

    counts = run_chunk(cancelling_ctx, GenerateHandler(), *first_chunk)

    # 4 rows per pass, a guided image takes 2: the first micro-batch held 2 items.
    assert engine.calls == 1
    assert counts == {ItemStatus.SUCCEEDED: 2, ItemStatus.CANCELLED: 6}
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed, job.cancelled) == (
        JobStatus.FINALIZING, 2, 0, 8,
    )  # fmt: skip
    drain(ctx)  # the second chunk (already cancelled by the API) and finalize
    job = get_job(ctx, job_id)
    assert job.status == JobStatus.CANCELLED and job.finished_at is not None
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == ["succeeded"] * 2 + ["cancelled"] * 8
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert [e["idx"] for e in errors] == list(range(2, 10))
    assert {e["status"] for e in errors} == {"cancelled"}
    assert len(read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))) == 2


def test_chunk_of_a_cancelling_job_cancels_its_pending_items(ctx: Context) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a", "b", "c"])
    _, chunk = pop_message(ctx, "janus.generate")
    with session_scope(ctx.database_url) as session:  # cancel requested, pending not yet moved
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLING))

    assert not run_chunk(ctx, GenerateHandler(), *chunk)

    job = get_job(ctx, job_id)
    assert (job.status, job.cancelled, job.succeeded) == (JobStatus.FINALIZING, 3, 0)
    assert pop_message(ctx, "janus.control") == (constants.FINALIZE_JOB_TASK, [job_id])


def manifest_job(ctx: Context, lines: int = 3) -> str:
    """A caption job over an uploaded manifest of `lines` images, not yet expanded."""
    body = "".join(json.dumps({"image": f"s3://b/img-{i}.jpg"}) + "\n" for i in range(lines))
    key = f"inputs/bench/{uuid.uuid4().hex}.jsonl"
    ctx.storage.put_bytes(key, body.encode())
    return create_job(ctx, JobKind.CAPTION, source={"manifest": f"storage:{key}"})


def test_cancel_before_expand_finalizes_as_cancelled(ctx: Context) -> None:
    job_id = manifest_job(ctx)
    cancel_like_the_api(ctx, job_id)  # the expand message is still queued
    job = get_job(ctx, job_id)
    assert (job.status, job.expanded) == (JobStatus.CANCELLING, False)
    assert pop_message(ctx, "janus.control") is None  # not finalizable yet: not expanded

    assert expand_source(ctx, job_id) == 0

    job = get_job(ctx, job_id)
    assert (job.status, job.expanded, job.total) == (JobStatus.FINALIZING, True, 0)
    assert pop_message(ctx, "janus.control") == (constants.FINALIZE_JOB_TASK, [job_id])
    assert finalize_job(ctx, job_id) == JobStatus.CANCELLED
    job = get_job(ctx, job_id)
    assert (job.status, job.error, job.total) == (JobStatus.CANCELLED, None, 0)
    assert get_items(ctx, job_id) == []
    assert ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl") == b""
    assert ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl") == b""
    assert expand_source(ctx, job_id) == 0  # a late redelivery adds nothing
    assert get_items(ctx, job_id) == []


def test_cancel_during_expand_cancels_items_inserted_after_it(
    make_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Page 1 is inserted, the cancel arrives, page 2 is inserted before the next check: the
    expansion stops and cancels page 2 itself (no chunk has to run for the job to finish)."""
    ctx = make_ctx(chunk_size="2")  # an insert page holds whole chunks: pages of 2
    monkeypatch.setattr(expand, "INSERT_PAGE", 2)
    monkeypatch.setattr(expand, "RESOLVE_PAGE", 1)
    monkeypatch.setattr(expand, "CHECK_EVERY", 5)
    job_id = manifest_job(ctx, lines=8)
    original = sources.read_lines

    def cancelled_after_two_lines(*args: Any, **kwargs: Any) -> Any:
        for n, line in enumerate(original(*args, **kwargs)):
            if n == 2:
                cancel_like_the_api(ctx, job_id)
            yield line

    monkeypatch.setattr(sources, "read_lines", cancelled_after_two_lines)
    assert expand_source(ctx, job_id) == 0

    job = get_job(ctx, job_id)
    assert (job.status, job.expanded) == (JobStatus.FINALIZING, True)
    assert (job.total, job.cancelled) == (4, 4)
    assert [r.status for r in get_items(ctx, job_id)] == [ItemStatus.CANCELLED] * 4
    drain(ctx)  # the two chunk messages find nothing to do; finalize runs
    job = get_job(ctx, job_id)
    assert (job.status, job.total, job.cancelled, job.succeeded) == (
        JobStatus.CANCELLED, 4, 4, 0,
    )  # fmt: skip
    assert len(read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))) == 4
