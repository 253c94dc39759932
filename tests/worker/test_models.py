"""A worker of one model in a fleet of several: it runs the chunks of its model's queue,
writes the job's model on result lines and image metadata, hands back a chunk of another
model's job instead of running it, and the sweeper re-sends a lost chunk to its model's
queue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from janus_batch import constants, jobs
from janus_batch.models import utcnow
from janus_batch.queue import model_slug
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    drain,
    get_items,
    get_job,
    peek_messages,
    pop_message,
    read_jsonl,
)
from worker.caption import CaptionHandler
from worker.chunk import run_chunk
from worker.encode import read_metadata
from worker.generate import GenerateHandler
from worker.sweeper import sweep

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

OWN = "janus.generate." + model_slug("tiny-b")


@pytest.fixture
def b_ctx(make_ctx: Any) -> Any:
    """A worker serving the tiny model as `tiny-b` in a fleet whose default is `tiny-a`."""
    return make_ctx(
        model_name="tiny-b", default_model="tiny-a", served_models="tiny-b", chunk_size="4"
    )


def _submit(ctx: Any, kind: str, items: list[Any], model: str | None = None) -> str:
    job, _ = jobs.create_job(
        ctx.settings, ctx.app, owner=constants.LOCAL_OWNER, kind=kind, items=items, model=model
    )
    return job.id


def test_a_job_on_the_workers_model_runs_from_its_queue_and_names_it(b_ctx: Any) -> None:
    job_id = _submit(b_ctx, JobKind.GENERATE, [{"prompt": "a fox", "seed": 3}], model="tiny-b")
    assert peek_messages(b_ctx, "janus.generate") == []
    task, args = pop_message(b_ctx, OWN)
    assert (task, args[0]) == (constants.GENERATE_CHUNK_TASK, job_id)
    run_chunk(b_ctx, GenerateHandler(), *args)
    drain(b_ctx)  # finalize
    assert get_job(b_ctx, job_id).status == JobStatus.SUCCEEDED
    [line] = read_jsonl(b_ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert line["model"] == "tiny-b"
    image = b_ctx.storage.get_bytes(line["images"][0]["key"])
    assert read_metadata(image)["model"] == "tiny-b"  # the public name, not the path


def test_a_chunk_of_another_models_job_is_handed_back_not_run(b_ctx: Any) -> None:
    """A chunk that reached the wrong worker (settings differing between processes): its
    items go back undispatched, unclaimed, for the next dispatch to route again."""
    job_id = _submit(b_ctx, JobKind.CAPTION, [{"image": "s3://bucket/a.jpg"}])  # on tiny-a
    assert get_job(b_ctx, job_id).model == "tiny-a"
    _, args = pop_message(b_ctx, "janus.caption")
    assert not run_chunk(b_ctx, CaptionHandler(), *args)
    [item] = get_items(b_ctx, job_id)
    assert (item.status, item.attempts, item.enqueued_at) == (ItemStatus.PENDING, 0, None)
    job = get_job(b_ctx, job_id)
    assert job.status == JobStatus.QUEUED
    assert job.waiting_since is not None  # the job says why it does not move
    assert "a worker serving tiny-b received its chunk and handed it back" in job.waiting_reason


def test_a_one_model_worker_runs_the_job_its_default_queue_brings(
    make_ctx: Any, worker_env: dict[str, str]
) -> None:
    """A deployment from before several models: the API records its own default name (here
    `hub/default`), the only worker serves a folder under another name and sets neither
    DEFAULT_MODEL nor MODEL_NAME. The job's chunk comes through the plain queue, and the
    worker runs it (handing it back would send it to the same queue forever)."""
    api = make_ctx(model="hub/default")
    job_id = _submit(api, JobKind.GENERATE, [{"prompt": "a fox", "seed": 3}])
    assert get_job(api, job_id).model == "hub/default"
    _, args = pop_message(api, "janus.generate")
    worker = make_ctx(model=worker_env["JANUS_BATCH_MODEL"])  # the tiny checkpoint's folder
    assert not (worker.settings.default_model or worker.settings.model_name)
    run_chunk(worker, GenerateHandler(), *args)
    [item] = get_items(worker, job_id)
    assert item.status == ItemStatus.SUCCEEDED


def test_the_sweeper_resends_a_lost_chunk_to_its_models_queue(make_ctx: Any) -> None:
    ctx = make_ctx(
        model_name="tiny-b", default_model="tiny-a", served_models="tiny-b",
        stale_pending_seconds="60",
    )  # fmt: skip
    job_id = _submit(ctx, JobKind.GENERATE, ["a", "b"], model="tiny-b")
    later = utcnow() + timedelta(seconds=61)
    assert sweep(ctx, now=later)["requeued_pending"] == 0  # its message waits in its queue
    _, (_, ids) = pop_message(ctx, OWN)  # lost
    assert sweep(ctx, now=later)["requeued_pending"] == 2
    assert peek_messages(ctx, OWN) == [(constants.GENERATE_CHUNK_TASK, [job_id, ids])]
    assert peek_messages(ctx, "janus.generate") == []
