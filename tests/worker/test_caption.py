"""Caption chunks: readable per-item errors for bad inputs, counts, a failing engine."""

from __future__ import annotations

from typing import Any

from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.worker.helpers import (
    EngineDouble,
    create_job,
    drain,
    get_items,
    get_job,
    jpeg_bytes,
    peek_messages,
    png_bytes,
    read_jsonl,
)
from worker.caption import CaptionHandler
from worker.chunk import run_chunk


def upload_inputs(s3_env: Any) -> list[str]:
    """Good and bad images in the test bucket; returns their URIs in item order."""
    client = s3_env.client()
    good = png_bytes()
    objects = {
        "in/good-0.png": good,
        "in/corrupt.png": good[: len(good) // 2],  # truncated PNG
        "in/good-1.jpg": jpeg_bytes(),
        "in/not-an-image.png": b"hello, I am text",
        "in/good-2.png": png_bytes((10, 10, 240), (70, 20)),
    }
    for key, data in objects.items():
        client.put_object(Bucket=s3_env.bucket, Key=key, Body=data)
    names = ["good-0.png", "corrupt.png", "good-1.jpg", "missing.png", "not-an-image.png",
             "good-2.png"]  # fmt: skip
    return [f"s3://{s3_env.bucket}/in/{name}" for name in names]


def test_caption_chunk_fails_only_bad_items(ctx: Any, s3_env: Any) -> None:
    uris = upload_inputs(s3_env)
    items = [{"image": uri, "custom_id": f"c{i}"} for i, uri in enumerate(uris)]
    job_id = create_job(ctx, JobKind.CAPTION, items, params={"max_new_tokens": 6})
    [(_, args)] = peek_messages(ctx, "janus.caption")
    assert args[0] == job_id and len(args[1]) == 6

    drain(ctx)

    job = get_job(ctx, job_id)
    assert (job.status, job.total, job.succeeded, job.failed, job.cancelled) == (
        JobStatus.SUCCEEDED, 6, 3, 3, 0,
    )  # fmt: skip
    rows = get_items(ctx, job_id)
    by_name = {row.input["image"].rsplit("/", 1)[1]: row for row in rows}
    for name in ("good-0.png", "good-1.jpg", "good-2.png"):
        row = by_name[name]
        assert row.status == ItemStatus.SUCCEEDED, row.error
        assert isinstance(row.result["caption"], str)
        assert row.attempts == 1 and row.lease_until is None and row.finished_at is not None
    bucket = s3_env.bucket
    assert by_name["corrupt.png"].error.startswith(
        f"cannot read image s3://{bucket}/in/corrupt.png: "
    )
    assert "truncated" in by_name["corrupt.png"].error
    assert by_name["not-an-image.png"].error == (
        f"cannot read image s3://{bucket}/in/not-an-image.png: cannot identify image file"
    )
    missing = by_name["missing.png"].error
    assert f"s3://{bucket}/in/missing.png" in missing
    assert "not found" in missing or "no such object" in missing
    assert all(
        r.status == ItemStatus.FAILED for n, r in by_name.items() if not n.startswith("good")
    )

    results = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    errors = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/errors.jsonl"))
    assert [line["idx"] for line in results] == [0, 2, 5]
    assert [line["custom_id"] for line in errors] == ["c1", "c3", "c4"]
    assert results[0]["caption"] == by_name["good-0.png"].result["caption"]
    assert results[0]["params"]["max_new_tokens"] == 6


class ExplodingEngine(EngineDouble):
    """An engine whose every pass raises."""

    def run_pass(self, units: list[Any]) -> list[Any]:
        raise RuntimeError("CUDA error: device-side assert triggered")


def test_engine_exception_fails_the_pass_not_the_worker(
    make_ctx: Any, s3_env: Any, tiny_engine: Any
) -> None:
    ctx = make_ctx()
    exploding = ExplodingEngine(tiny_engine)
    ctx = type(ctx)(ctx.settings, ctx.storage, ctx.app, engine=lambda: exploding)
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="a.png", Body=png_bytes())
    job_id = create_job(ctx, JobKind.CAPTION, [f"s3://{s3_env.bucket}/a.png"] * 5)
    ids = [row.id for row in get_items(ctx, job_id)]

    counts = run_chunk(ctx, CaptionHandler(), job_id, ids)

    assert counts == {ItemStatus.FAILED: 5}
    rows = get_items(ctx, job_id)
    assert {row.error for row in rows} == {
        "model error: RuntimeError: CUDA error: device-side assert triggered"
    }
    job = get_job(ctx, job_id)
    assert (job.status, job.failed) == (JobStatus.FINALIZING, 5)


def captions_of(ctx: Any, s3_env: Any, items: list[dict[str, Any]]) -> list[Any]:
    """Run a sampled caption job (temperature 0.8) of `items`; its rows in item order."""
    for item in items:
        item["image"] = f"s3://{s3_env.bucket}/seeds/{item['image']}"
    params = {"temperature": 0.8, "max_new_tokens": 8}
    job_id = create_job(ctx, JobKind.CAPTION, items, params=params)
    drain(ctx)
    rows = get_items(ctx, job_id)
    assert all(row.status == ItemStatus.SUCCEEDED for row in rows), [r.error for r in rows]
    return rows


def test_sampled_captions_follow_the_recorded_seed(ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="seeds/red.png", Body=png_bytes())
    client.put_object(Bucket=s3_env.bucket, Key="seeds/blue.png", Body=png_bytes((10, 10, 240)))

    [alone] = captions_of(ctx, s3_env, [{"image": "red.png", "seed": 1234}])
    shared, other_seed, drawn = captions_of(
        ctx,
        s3_env,
        [
            {"image": "blue.png", "seed": 99},  # other requests share the batch this time
            {"image": "red.png", "seed": 1234},
            {"image": "red.png", "seed": 4321},
            {"image": "red.png"},
        ],
    )[1:]

    assert alone.input["seed"] == shared.input["seed"] == 1234
    assert shared.result["caption"] == alone.result["caption"]  # same image, question and seed
    assert other_seed.result["caption"] != alone.result["caption"]  # another seed samples anew
    # a seed not given was drawn and recorded: resubmitting it makes the same caption again
    assert isinstance(drawn.input["seed"], int) and 0 <= drawn.input["seed"] < 2**63
    [again] = captions_of(ctx, s3_env, [{"image": "red.png", "seed": drawn.input["seed"]}])
    assert again.result["caption"] == drawn.result["caption"]
