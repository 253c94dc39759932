"""Hostile inputs meet the worker's guards: an image over the pixel limit fails its own item
(naming the limit), an input or a manifest on an internal host is refused by the egress
policy (failed, never retried, its content never read), a manifest line over the length
limit fails alone."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from janus_batch.db import session_scope
from janus_batch.models import Item
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.security.images import header_only_png
from tests.security.listeners import http_listener
from tests.worker.helpers import create_job, drain, get_items, get_job, png_bytes
from worker.expand import expand_source


def test_an_image_over_the_pixel_limit_fails_only_its_item(ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="in/ok.png", Body=png_bytes())
    client.put_object(Bucket=s3_env.bucket, Key="in/huge.png", Body=header_only_png(9000, 9000))
    uris = [f"s3://{s3_env.bucket}/in/{name}" for name in ("ok.png", "huge.png")]
    job_id = create_job(ctx, JobKind.CAPTION, uris, params={"max_new_tokens": 4})

    drain(ctx)

    ok, huge = get_items(ctx, job_id)
    assert ok.status == ItemStatus.SUCCEEDED, ok.error
    assert huge.status == ItemStatus.FAILED and huge.attempts == 1
    assert huge.error == (
        f"cannot read image {uris[1]}: image is 9000x9000 = 81,000,000 pixels, over the "
        "16,777,216-pixel limit (JANUS_BATCH_MAX_IMAGE_PIXELS)"
    )
    assert get_job(ctx, job_id).status == JobStatus.SUCCEEDED


def test_the_pixel_limit_is_a_setting(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(max_image_pixels="1000")
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="in/small.png", Body=png_bytes(size=(30, 30)))
    client.put_object(Bucket=s3_env.bucket, Key="in/big.png", Body=png_bytes(size=(40, 30)))
    uris = [f"s3://{s3_env.bucket}/in/{name}" for name in ("small.png", "big.png")]
    job_id = create_job(ctx, JobKind.CAPTION, uris, params={"max_new_tokens": 4})
    drain(ctx)
    small, big = get_items(ctx, job_id)
    assert small.status == ItemStatus.SUCCEEDED, small.error
    assert big.error.endswith("40x30 = 1,200 pixels, over the 1,000-pixel limit "
                              "(JANUS_BATCH_MAX_IMAGE_PIXELS)")  # fmt: skip


def test_an_input_on_an_internal_host_is_refused_not_retried(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(egress_allow_http="true")  # plain http allowed: the address is refused
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="in/ok.png", Body=png_bytes())
    with http_listener({"/cat.png": (200, {}, png_bytes())}) as internal:
        uri = internal.url("/cat.png")
        job_id = create_job(ctx, JobKind.CAPTION, [f"s3://{s3_env.bucket}/in/ok.png"] * 2,
                            params={"max_new_tokens": 4})  # fmt: skip
        # an item stored before the policy existed: the worker refuses it all the same
        with session_scope(ctx.database_url) as session:
            session.execute(
                update(Item)
                .where(Item.job_id == job_id, Item.idx == 1)
                .values(input={"image": uri, "uri": uri, "prompt": "?", "seed": 1})
            )

        drain(ctx)

        ok, refused = get_items(ctx, job_id)
        assert ok.status == ItemStatus.SUCCEEDED, ok.error
        assert refused.status == ItemStatus.FAILED and refused.attempts == 1
        assert refused.error == f"cannot fetch {uri}: refused by the egress policy"
        assert sum(internal.hits.values()) == 0


def test_a_manifest_on_an_internal_host_fails_the_job_unread(make_ctx: Any) -> None:
    ctx = make_ctx(egress_allow_http="true")
    lines = b'{"prompt": "REDIS_PASSWORD=hunter2"}\nrequirepass hunter2\n'
    with http_listener({"/internal.txt": (200, {}, lines)}) as internal:
        url = internal.url("/internal.txt")
        job_id = create_job(ctx, JobKind.GENERATE, source={"manifest": url})
        assert expand_source(ctx, job_id) == 0
        drain(ctx)
        job = get_job(ctx, job_id)
        assert job.status == JobStatus.FAILED
        assert job.error == f"cannot read {url}: refused by the egress policy"
        assert get_items(ctx, job_id) == []  # no line came back as an item's input.raw
        assert sum(internal.hits.values()) == 0


def test_a_manifest_line_over_the_limit_fails_alone(make_ctx: Any) -> None:
    ctx = make_ctx(max_manifest_line_bytes="1024")
    long = '{"prompt": "' + "x" * 5000 + '"}'
    manifest = f'{{"prompt": "a fox"}}\n{long}\n{{"prompt": "a lighthouse"}}\n'
    ctx.storage.put_bytes("inputs/local/m.jsonl", manifest.encode())
    job_id = create_job(ctx, JobKind.GENERATE, source={"manifest": "storage:inputs/local/m.jsonl"})
    assert expand_source(ctx, job_id) == 3
    drain(ctx)
    fox, too_long, lighthouse = get_items(ctx, job_id)
    assert fox.status == lighthouse.status == ItemStatus.SUCCEEDED
    assert too_long.status == ItemStatus.FAILED
    assert too_long.error == (
        "manifest line 2: is 5,014 bytes long; the limit is 1,024 "
        "(JANUS_BATCH_MAX_MANIFEST_LINE_BYTES)"
    )
    assert too_long.input == {"line": 2, "raw": long[:500]}
