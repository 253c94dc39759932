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
from janus_batch.storage import TransientStorageError
from tests.fixtures.proxy import TcpProxy
from tests.worker.helpers import (
    cancel_like_the_api,
    create_job,
    dispatch,
    drain,
    get_items,
    get_job,
    png_bytes,
    pop_message,
)
from worker import metrics
from worker.breaker import StorageBreaker
from worker.chunk import run_chunk
from worker.context import Context
from worker.generate import GenerateHandler

FINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
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
    """Run messages until the job is final: no sweeper needed (deferred items are sent again
    by the chunk that deferred them; claims wait for the breaker)."""
    deadline = time.monotonic() + timeout
    while get_job(ctx, job_id).status not in FINAL:
        assert time.monotonic() < deadline, get_items(ctx, job_id)
        drain(ctx)
        time.sleep(0.1)


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
    assert ctx.pipeline().breaker.trips == 1  # it did wait for storage, and did not flap
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
        assert all(r.status == ItemStatus.PENDING and r.retries == 1 for r in rows)
        assert all("storage unreachable for over 1 s" in r.error for r in rows)
        assert all(r.enqueued_at is not None for r in rows)  # sent again by their chunk
    _finish(ctx, job_id)  # no sweeper: the tail of the job finishes by itself
    restored.join()
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 2, 0)
    assert all(r.attempts == 2 and r.retries == 1 for r in get_items(ctx, job_id))


def test_cancel_while_storage_is_down_ends_the_waiting_items(
    make_ctx: Any, s3_env: Any, proxy: TcpProxy
) -> None:
    """Rendered images waiting for storage are dropped as soon as their job is cancelled:
    the items end cancelled, the job with them, without waiting for storage."""
    ctx = make_ctx(storage_url=s3_env.storage_url, s3_endpoint_url=f"http://127.0.0.1:{proxy.port}")
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox", "a boat"])
    _, chunk = pop_message(ctx, "janus.generate")
    proxy.cut()
    try:
        cancel = threading.Timer(3.0, cancel_like_the_api, (ctx, job_id))
        cancel.start()
        assert dispatch(ctx, "janus.generate_chunk", chunk) == {"cancelled": 2}
        cancel.join()
        assert ctx.pipeline().breaker.down_since is not None  # storage is still down
        assert get_job(ctx, job_id).status == JobStatus.FINALIZING
    finally:
        proxy.restore()
    drain(ctx)  # the manifests, once storage answers (Celery retries finalize meanwhile)
    job = get_job(ctx, job_id)
    assert (job.status, job.cancelled, job.failed) == (JobStatus.CANCELLED, 2, 0)


class WritesDown:
    """A storage whose reads answer while its writes fail transiently (SlowDown on PUT, a
    cluster without write quorum) until `up` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.up = threading.Event()

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        if not self.up.is_set():
            raise TransientStorageError(f"cannot write {key}: SlowDown (HTTP 503)")
        self.inner.put_bytes(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_write_only_outage_is_probed_by_a_write(ctx: Any) -> None:
    """The breaker of an upload probes with a write: reads answering does not close it (no
    flapping, no re-rendering); the images go once writes work again."""
    storage = WritesDown(ctx.storage)
    flaky = Context(ctx.settings, storage, ctx.app, engine=ctx.engine, pipelines=ctx.pipelines)  # type: ignore[arg-type]
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox"])
    _, chunk = pop_message(ctx, "janus.generate")
    threading.Timer(3.0, storage.up.set).start()
    assert run_chunk(flaky, GenerateHandler(), *chunk) == {"succeeded": 1}
    assert ctx.pipeline().breaker.trips == 1
    [row] = get_items(ctx, job_id)
    assert row.attempts == 1 and ctx.storage.exists(row.result["images"][0]["key"])


def test_patience_counts_from_the_start_of_the_outage() -> None:
    """An output that reaches an outtake thread late in an outage is not given a fresh
    patience: once storage has been down `storage_patience`, it is deferred at once."""
    from worker.fetch import is_transient
    from worker.generate import StorageDown, _wait_for_storage

    breaker = StorageBreaker(is_transient=is_transient, min_cool=60)
    breaker.trip("cannot write: storage unreachable")
    with pytest.raises(StorageDown):
        _wait_for_storage(breaker, 0.0, lambda: True, "cannot store x")
    assert breaker.opened is not None and breaker.opened <= time.monotonic()
    breaker.success()
    _wait_for_storage(breaker, 0.0, lambda: True, "cannot store x")  # closed: returns


def test_a_chunk_gives_its_items_back_when_storage_stays_down(make_ctx: Any) -> None:
    """A chunk does not hold its message through a long outage: after half of
    stale_pending_seconds it hands its items back undispatched and returns."""
    ctx = make_ctx(stale_pending_seconds="2")
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox", "a boat"])
    _, chunk = pop_message(ctx, "janus.generate")

    def still_down() -> None:
        raise TransientStorageError("storage unreachable")

    ctx.pipeline().breaker.trip("storage unreachable", probe=still_down)
    assert run_chunk(ctx, GenerateHandler(), *chunk) == {}
    rows = get_items(ctx, job_id)
    assert all(r.status == ItemStatus.PENDING and r.enqueued_at is None for r in rows)
    assert all(r.attempts == 0 for r in rows)  # never claimed


def test_an_input_host_failing_transiently_defers_its_item_which_comes_back_by_itself(
    make_ctx: Any,
) -> None:
    """An http input answering 503 defers its item (not failed, no attempt spent) with a
    short wait; the chunk schedules a dispatch of the job for when the wait is over, so the
    item goes again and succeeds with no sweeper running."""
    from janus_batch import constants
    from tests.security.listeners import http_listener

    with http_listener({"/cat.png": (503, {}, b"busy")}) as web:
        ctx = make_ctx(egress_allow=web.host, egress_allow_http="true")
        job_id = create_job(ctx, JobKind.CAPTION, [web.url("/cat.png")])
        _, chunk = pop_message(ctx, "janus.caption")
        assert dispatch(ctx, "janus.caption_chunk", chunk) == {"pending": 1}
        [row] = get_items(ctx, job_id)
        assert (row.status, row.retries, row.attempts) == (ItemStatus.PENDING, 1, 1)
        assert row.error.startswith("waiting: cannot fetch http://") and "503" in row.error
        assert pop_message(ctx, "janus.control") == (constants.DISPATCH_JOB_TASK, [job_id])
        web.routes["/cat.png"] = (200, {"Content-Type": "image/png"}, png_bytes())
        time.sleep(1.1)  # the item's wait (at most 1 s for a first deferral)
        dispatch(ctx, constants.DISPATCH_JOB_TASK, [job_id])  # the delayed dispatch, due now
        drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 1, 0)
    assert job.waiting_since is None
