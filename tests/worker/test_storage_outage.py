"""Storage down pauses work, it never fails it: the S3 server behind a TCP proxy that is cut
for longer than every quick retry, mid-job, with the real pipeline (engine thread, outtake
pool, recorder) of an in-process worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from janus_batch.db import session_scope
from janus_batch.models import Item
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.fixtures.proxy import TcpProxy
from tests.worker.helpers import (
    create_job,
    dispatch,
    drain,
    get_items,
    get_job,
    png_bytes,
    pop_message,
)
from worker import metrics
from worker.sweeper import sweep

OUTAGE = 4.0
"""Longer than the quick retries of this test's settings (one retry after ~0.5 s)."""


@pytest.fixture
def proxy(s3_env: Any) -> Iterator[TcpProxy]:
    port = int(s3_env.endpoint_url.rsplit(":", 1)[1])
    with TcpProxy(port) as p:
        yield p


def _outage_during(proxy: TcpProxy, seconds: float) -> threading.Thread:
    """Cut now, restore after `seconds` (in a thread)."""
    proxy.cut()
    thread = threading.Timer(seconds, proxy.restore)
    thread.start()
    return thread


def _finish(ctx: Any, job_id: str, timeout: float = 60.0) -> None:
    """Run messages and sweeps until the job is final (deferred items wait a second)."""
    deadline = time.monotonic() + timeout
    while get_job(ctx, job_id).status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        assert time.monotonic() < deadline, get_items(ctx, job_id)
        drain(ctx)
        time.sleep(0.3)
        sweep(ctx)


def test_caption_inputs_unreachable_defer_items_then_all_succeed(
    make_ctx: Any, s3_env: Any, proxy: TcpProxy
) -> None:
    ctx = make_ctx(s3_endpoint_url=f"http://127.0.0.1:{proxy.port}", chunk_size="4")
    client = s3_env.client()
    uris = []
    for i in range(8):
        client.put_object(Bucket=s3_env.bucket, Key=f"in/{i}.png", Body=png_bytes((i * 30, 9, 9)))
        uris.append(f"s3://{s3_env.bucket}/in/{i}.png")
    job_id = create_job(ctx, JobKind.CAPTION, uris, params={"max_new_tokens": 3})
    _, first = pop_message(ctx, "janus.caption")
    dispatch(ctx, "janus.caption_chunk", first)  # the first chunk runs with storage up

    restored = _outage_during(proxy, OUTAGE)
    _, second = pop_message(ctx, "janus.caption")
    dispatch(ctx, "janus.caption_chunk", second)  # every fetch fails: deferred, not failed
    breaker = ctx.pipeline().breaker
    assert breaker.down_since is not None and "cannot fetch" in breaker.reason
    assert metrics.STORAGE_UP._value.get() == 0
    rows = get_items(ctx, job_id)
    waiting = [r for r in rows if r.status == ItemStatus.PENDING]
    assert len(waiting) == 4 and all(r.retries == 1 and r.attempts == 1 for r in waiting)
    assert all(r.error.startswith("waiting: cannot fetch s3://") for r in waiting)
    job = get_job(ctx, job_id)
    assert (
        job.failed == 0
        and job.waiting_since is not None
        and "cannot fetch" in (job.waiting_reason or "")
    )

    _finish(ctx, job_id)  # claims wait for the breaker; the comeback resumes them
    restored.join()
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 8, 0)
    assert job.waiting_since is None and breaker.down_since is None
    assert all(r.result["caption"] is not None for r in get_items(ctx, job_id))


def test_generated_images_wait_in_memory_for_storage(
    make_ctx: Any, s3_env: Any, proxy: TcpProxy
) -> None:
    ctx = make_ctx(storage_url=s3_env.storage_url, s3_endpoint_url=f"http://127.0.0.1:{proxy.port}")
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox", {"prompt": "a boat", "n": 2}])
    _, chunk = pop_message(ctx, "janus.generate")
    restored = _outage_during(proxy, OUTAGE)
    counts = dispatch(ctx, "janus.generate_chunk", chunk)  # uploads wait, then go through
    restored.join()
    assert counts == {"succeeded": 2}
    rows = get_items(ctx, job_id)
    assert all(r.attempts == 1 and r.retries == 0 for r in rows)  # rendered once
    client = s3_env.client()
    for row in rows:
        for image in row.result["images"]:
            client.head_object(Bucket=s3_env.bucket, Key=f"jobs/{image['key']}")
    drain(ctx)
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED


def test_storage_down_past_patience_defers_generated_items(
    make_ctx: Any, s3_env: Any, proxy: TcpProxy
) -> None:
    ctx = make_ctx(
        storage_url=s3_env.storage_url,
        s3_endpoint_url=f"http://127.0.0.1:{proxy.port}",
        storage_patience="1",
    )
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox", "a boat"])
    _, chunk = pop_message(ctx, "janus.generate")
    restored = _outage_during(proxy, OUTAGE)
    assert dispatch(ctx, "janus.generate_chunk", chunk) == {"pending": 2}
    with session_scope(ctx.database_url) as session:
        rows = session.query(Item).filter(Item.job_id == job_id).all()
        assert all(r.status == ItemStatus.PENDING and r.enqueued_at is None for r in rows)
        assert all(r.not_before is not None and r.retries == 1 for r in rows)
    _finish(ctx, job_id)
    restored.join()
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 2, 0)
    assert all(r.attempts == 2 and r.retries == 1 for r in get_items(ctx, job_id))
