"""Generate chunks: images at deterministic keys with seeds and metadata; redelivery."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from janus import derive_seed
from janus_batch.states import ItemStatus, JobKind, JobStatus
from janus_batch.storage import StorageError, TransientStorageError
from tests.worker.helpers import create_job, drain, get_items, get_job, pop_message, read_jsonl
from worker.chunk import run_chunk
from worker.context import Context
from worker.encode import read_metadata
from worker.finalize import finalize_job
from worker.generate import GenerateHandler

PROMPTS = [
    {"prompt": "a red fox", "n": 2, "seed": 11, "custom_id": "fox"},
    {"prompt": "a lighthouse", "seed": 12},
    {"prompt": "unguided", "seed": 13, "cfg_weight": 1.0, "n": 3},
]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_generate_chunk_uploads_images(make_ctx: Any, s3_env: Any, where: str) -> None:
    ctx = make_ctx(storage_url=s3_env.storage_url) if where == "s3" else make_ctx()
    job_id = create_job(ctx, JobKind.GENERATE, PROMPTS, params={"format": "png"})
    drain(ctx)

    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 3, 0)
    rows = get_items(ctx, job_id)
    for row, spec in zip(rows, PROMPTS, strict=True):
        assert row.status == ItemStatus.SUCCEEDED
        images = row.result["images"]
        assert row.result["format"] == "png"
        assert [img["index"] for img in images] == list(range(spec.get("n", 1)))
        for img in images:
            k = img["index"]
            assert img["key"] == f"jobs/{job_id}/images/{row.idx:08d}_{k}.png"
            assert img["uri"] == ctx.storage.uri(img["key"])
            assert img["seed"] == derive_seed(spec["seed"], k)
            data = ctx.storage.get_bytes(img["key"])
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                assert image.size == (64, 64)
            meta = read_metadata(data)
            assert meta["prompt"] == spec["prompt"] and meta["seed"] == str(img["seed"])
            assert meta["job_id"] == job_id and meta["item_idx"] == str(row.idx)
            assert meta["Software"] == "janus-batch" and meta["model"]
    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert [line["custom_id"] for line in results] == ["fox", None, None]
    # result lines carry each image as recorded, plus (on S3) a presigned download URL
    shown = [{k: v for k, v in img.items() if k != "url"} for img in results[0]["images"]]
    assert shown == rows[0].result["images"]
    urls = [img.get("url") for img in results[0]["images"]]
    if where == "s3":
        assert all(u and "X-Amz-Signature=" in u and img["key"] in u
                   for u, img in zip(urls, shown, strict=True))  # fmt: skip
    else:
        assert urls == [None] * len(urls)
    assert results[0]["input"]["seed"] == 11 and results[0]["status"] == "succeeded"


def test_jpeg_format(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a cat"], params={"format": "jpeg"})
    drain(ctx)
    [row] = get_items(ctx, job_id)
    [img] = row.result["images"]
    assert img["key"].endswith("00000000_0.jpeg")
    data = ctx.storage.get_bytes(img["key"])
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    assert read_metadata(data)["prompt"] == "a cat"


def test_same_chunk_twice_changes_nothing(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, PROMPTS)
    _, args = pop_message(ctx, "janus.generate")
    assert args[0] == job_id

    first = run_chunk(ctx, GenerateHandler(), *args)
    assert first == {ItemStatus.SUCCEEDED: 3}
    assert pop_message(ctx, "janus.control") == ("janus.finalize_job", [job_id])
    before = [(r.status, r.attempts, r.result, r.finished_at) for r in get_items(ctx, job_id)]
    keys = sorted(ctx.storage.iter_keys(f"jobs/{job_id}/images/"))

    second = run_chunk(ctx, GenerateHandler(), *args)  # redelivered while finalizing
    assert not second
    assert finalize_job(ctx, job_id) == JobStatus.SUCCEEDED
    manifest = ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl")
    third = run_chunk(ctx, GenerateHandler(), *args)  # redelivered after the end
    assert not third

    after = [(r.status, r.attempts, r.result, r.finished_at) for r in get_items(ctx, job_id)]
    assert after == before
    job = get_job(ctx, job_id)
    assert (job.total, job.succeeded, job.failed, job.cancelled) == (3, 3, 0, 0)
    assert sorted(ctx.storage.iter_keys(f"jobs/{job_id}/images/")) == keys
    assert len(keys) == 6
    assert pop_message(ctx, "janus.control") is None  # finalize was sent exactly once
    assert ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl") == manifest
    assert len(read_jsonl(manifest)) == 3


def test_invalid_request_fails_its_item(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["ok", "bad"])
    from sqlalchemy import update

    from janus_batch.db import session_scope
    from janus_batch.models import Item

    with session_scope(ctx.database_url) as session:  # an input the API would never write
        session.execute(
            update(Item)
            .where(Item.job_id == job_id, Item.idx == 1)
            .values(input={"prompt": "bad", "n": 0, "seed": 1})
        )
    drain(ctx)
    rows = get_items(ctx, job_id)
    assert rows[0].status == ItemStatus.SUCCEEDED
    assert rows[1].status == ItemStatus.FAILED and "n must be an integer >= 1" in rows[1].error
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED


class FlakyStorage:
    """Local storage whose first write fails transiently and whose item-1 writes always fail."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.calls += 1
        if "/00000001_" in key:
            raise StorageError(f"cannot write {key}: disk quota exceeded")
        if self.calls == 1:
            raise TransientStorageError("connection reset")
        self.inner.put_bytes(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_upload_errors_retry_then_fail_their_item(ctx: Any) -> None:
    storage = FlakyStorage(ctx.storage)
    flaky = Context(ctx.settings, storage, ctx.app, engine=ctx.engine)  # type: ignore[arg-type]
    job_id = create_job(ctx, JobKind.GENERATE, ["kept", "lost"])
    _, chunk = pop_message(ctx, "janus.generate")
    assert run_chunk(flaky, GenerateHandler(), *chunk) == {"succeeded": 1, "failed": 1}
    ok, bad = get_items(ctx, job_id)
    assert ctx.storage.exists(ok.result["images"][0]["key"])
    assert bad.error == (
        f"cannot store image 0 at jobs/{job_id}/images/00000001_0.png: "
        f"cannot write jobs/{job_id}/images/00000001_0.png: disk quota exceeded"
    )
