"""Cancelling a job while a chunk runs: the chunk stops between micro-batches."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from janus_batch import constants as c
from janus_batch.constants import LOCAL_OWNER
from janus_batch.db import session_scope
from janus_batch.jobs import cancel_job
from janus_batch.models import Job
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import create_job, drain, get_items, get_job, pop_message, read_jsonl
from worker.chunk import run_chunk
from worker.context import Context
from worker.generate import GenerateHandler


def cancel_like_the_api(ctx: Context, job_id: str) -> None:
    """The API's cancel: cancelling, pending items cancelled and counted, then the move to
    finalizing (whose winner sends finalize)."""
    cancel_job(ctx.database_url, ctx.app, LOCAL_OWNER, job_id)


class CancellingEngine:
    """The tiny engine, with a cancel arriving during the first call."""

    def __init__(self, engine: Any, ctx: Context, job_id: str) -> None:
        self.engine, self.ctx, self.job_id, self.calls = engine, ctx, job_id, 0
        self.model_name = engine.model_name

    def generate(self, requests: list[Any]) -> list[Any]:
        self.calls += 1
        if self.calls == 1:
            cancel_like_the_api(self.ctx, self.job_id)
        return self.engine.generate(requests)


def test_cancel_mid_chunk(ctx: Context, tiny_engine: Any) -> None:
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
    assert pop_message(ctx, "janus.control") == (c.FINALIZE_JOB_TASK, [job_id])
