"""Worker metrics (`worker.metrics`): what the pipeline functions record, checked as the
change of the default registry's samples around a run."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from prometheus_client import REGISTRY

from janus_batch import constants
from janus_batch.states import ItemStatus, JobKind
from tests.worker.helpers import (
    CancellingEngine,
    clear_queues,
    create_job,
    png_bytes,
    pop_message,
    redis_client,
)
from worker.caption import CaptionHandler
from worker.chunk import run_chunk
from worker.context import Context
from worker.generate import GenerateHandler
from worker.sweeper import sweep


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Samples:
    """A snapshot of every sample of the default registry; `delta` is the change since."""

    def __init__(self) -> None:
        self.before = self._all()

    @staticmethod
    def _all() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in REGISTRY.collect()
            for s in family.samples
        }

    def delta(self, name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return (REGISTRY.get_sample_value(name, labels) or 0.0) - self.before.get(key, 0.0)


def items(kind: str, outcome: str) -> dict[str, str]:
    return {"name": "janus_worker_items_processed_total", "kind": kind, "outcome": outcome}


def test_caption_chunk_records_items_fetch_batch_and_fill(make_ctx: Any, s3_env: Any) -> None:
    # the chunk's 3 requests reach the engine one by one: a long pass wait keeps them in one
    # pass however slowly a busy machine prepares them
    ctx = make_ctx(pass_wait_ms="3000")
    client = s3_env.client()
    good = png_bytes()
    client.put_object(Bucket=s3_env.bucket, Key="m/good.png", Body=good)
    client.put_object(Bucket=s3_env.bucket, Key="m/corrupt.png", Body=good[: len(good) // 2])
    names = ["good", "missing", "good", "corrupt", "good"]
    uris = [f"s3://{s3_env.bucket}/m/{name}.png" for name in names]
    job_id = create_job(ctx, JobKind.CAPTION, uris, params={"max_new_tokens": 3})
    seen = Samples()

    _, chunk = pop_message(ctx, constants.CAPTION_QUEUE)
    assert run_chunk(ctx, CaptionHandler(), *chunk) == {
        ItemStatus.SUCCEEDED: 3, ItemStatus.FAILED: 2,
    }  # fmt: skip

    assert seen.delta(**items("caption", "succeeded")) == 3
    assert seen.delta(**items("caption", "failed")) == 2  # missing (fetch), corrupt (decode)
    assert seen.delta("janus_worker_chunk_seconds_count", kind="caption") == 1
    assert seen.delta("janus_worker_fetch_seconds_count") == 1  # one fetch phase per chunk
    # 4 fetched images make one micro-batch (4 rows); the corrupt one fails before the engine
    assert seen.delta("janus_worker_batch_size_count", kind="caption") == 1
    assert seen.delta("janus_worker_batch_size_sum", kind="caption") == 3
    assert seen.delta("janus_worker_model_seconds_count", kind="caption") == 1
    assert seen.delta("janus_worker_model_seconds_sum", kind="caption") > 0
    # one forward pass (same question, same shapes): 3 of the engine's 4 rows
    assert seen.delta("janus_worker_batch_fill_ratio_count", kind="caption") == 1
    assert seen.delta("janus_worker_batch_fill_ratio_sum", kind="caption") == pytest.approx(0.75)
    assert seen.delta("janus_worker_upload_seconds_count") == 0
    assert seen.delta(**items("generate", "succeeded")) == 0
    assert job_id


def test_generate_chunk_records_batches_uploads_and_fill(make_ctx: Any) -> None:
    # guided (cfg_weight 5): 2 rows per image; 4 rows per pass -> micro-batches of 2 and 1 items
    # (a long pass wait keeps the first pass full however slowly a busy machine prepares)
    ctx = make_ctx(pass_wait_ms="3000")
    job_id = create_job(ctx, JobKind.GENERATE, ["a fox", "a cat", "a dog"])
    seen = Samples()

    _, chunk = pop_message(ctx, constants.GENERATE_QUEUE)
    assert run_chunk(ctx, GenerateHandler(), *chunk) == {ItemStatus.SUCCEEDED: 3}

    assert seen.delta(**items("generate", "succeeded")) == 3
    assert seen.delta(**items("generate", "failed")) == 0
    assert seen.delta("janus_worker_chunk_seconds_count", kind="generate") == 1
    assert seen.delta("janus_worker_batch_size_count", kind="generate") == 2
    assert seen.delta("janus_worker_batch_size_sum", kind="generate") == 3
    assert seen.delta("janus_worker_model_seconds_count", kind="generate") == 2
    assert seen.delta("janus_worker_upload_seconds_count") == 3  # one encode + upload per image
    assert seen.delta("janus_worker_upload_seconds_sum") > 0
    # passes: 4/4 rows, then 2/4 rows
    assert seen.delta("janus_worker_batch_fill_ratio_count", kind="generate") == 2
    assert seen.delta("janus_worker_batch_fill_ratio_sum", kind="generate") == pytest.approx(1.5)
    assert seen.delta("janus_worker_fetch_seconds_count") == 0
    assert job_id


def test_a_redelivered_chunk_counts_nothing(ctx: Context) -> None:
    create_job(ctx, JobKind.GENERATE, ["a fox", "a cat"], params={"cfg_weight": 1.0})
    _, chunk = pop_message(ctx, constants.GENERATE_QUEUE)
    run_chunk(ctx, GenerateHandler(), *chunk)
    seen = Samples()

    assert run_chunk(ctx, GenerateHandler(), *chunk) == {}  # the same message again

    for outcome in ("succeeded", "failed", "cancelled"):
        assert seen.delta(**items("generate", outcome)) == 0
    assert seen.delta("janus_worker_chunk_seconds_count", kind="generate") == 0
    assert seen.delta("janus_worker_batch_size_count", kind="generate") == 0


def test_cancelled_items_are_counted_by_the_chunk_that_moved_them(
    ctx: Context, tiny_engine: Any
) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, [f"prompt {i}" for i in range(10)])  # 8 + 2
    _, first = pop_message(ctx, constants.GENERATE_QUEUE)
    _, second = pop_message(ctx, constants.GENERATE_QUEUE)
    engine = CancellingEngine(tiny_engine, ctx, job_id)
    cancelling = Context(ctx.settings, ctx.storage, ctx.app, engine=lambda: engine)
    seen = Samples()

    # 2 items in the first micro-batch succeed; the chunk's other 6 claimed items are
    # cancelled by the worker; the 2 pending items of the second chunk were cancelled by
    # the API (not counted here), so its message moves nothing.
    assert run_chunk(cancelling, GenerateHandler(), *first) == {
        ItemStatus.SUCCEEDED: 2, ItemStatus.CANCELLED: 6,
    }  # fmt: skip
    assert run_chunk(cancelling, GenerateHandler(), *second) == {}

    assert seen.delta(**items("generate", "succeeded")) == 2
    assert seen.delta(**items("generate", "cancelled")) == 6
    assert seen.delta(**items("generate", "failed")) == 0
    assert seen.delta("janus_worker_batch_size_count", kind="generate") == 1


def test_sweep_sets_queue_depths_from_redis(make_ctx: Any) -> None:
    ctx = make_ctx(dispatch_window="2")
    create_job(ctx, JobKind.CAPTION, [f"s3://b/{i}.png" for i in range(20)])  # chunks of 8
    create_job(ctx, JobKind.GENERATE, ["a fox"])
    redis_client(ctx).rpush(f"{ctx.settings.queue_prefix}{constants.CONTROL_QUEUE}", b"x", b"y")
    # another deployment's keys (no prefix) are not ours
    redis_client(ctx).rpush(f"other-{ctx.settings.queue_prefix}{constants.GENERATE_QUEUE}", b"z")

    sweep(ctx)

    # 3 chunks of 8, 2 of them in the broker (the job's dispatch window)
    assert sample("janus_queue_depth", queue=constants.CAPTION_QUEUE) == 2
    assert sample("janus_queue_depth", queue=constants.GENERATE_QUEUE) == 1
    assert sample("janus_queue_depth", queue=constants.CONTROL_QUEUE) == 2

    redis_client(ctx).delete(f"other-{ctx.settings.queue_prefix}{constants.GENERATE_QUEUE}")
    clear_queues(ctx)  # the messages were taken (the items are not stale: nothing re-sent)
    sweep(ctx)
    for queue in (constants.CAPTION_QUEUE, constants.GENERATE_QUEUE, constants.CONTROL_QUEUE):
        assert sample("janus_queue_depth", queue=queue) == 0


def test_serving_on_a_taken_port_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    from worker.app import serve_metrics

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_metrics(port) is False
    assert f"metrics not served on port {port}" in caplog.text
