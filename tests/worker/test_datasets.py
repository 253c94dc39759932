"""Dataset sources captioned end to end through the real pipeline (expand, chunks on the tiny
engine, finalize): WebDataset shards on S3 and uploaded, CSV URL lists served over loopback
HTTP, prompt templates and several prompts per image; outputs joined back to the keys."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from janus_batch import constants
from janus_batch.files import save_upload
from janus_batch.inputs import check_source
from janus_batch.items import NewItem, add_items
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.fixtures.datasets import csv_text, image_server, img2dataset_shards, jpeg
from tests.worker.helpers import create_job, drain, get_items, get_job, read_jsonl
from worker import datasets as worker_datasets
from worker.expand import expand_source


def dataset_job(ctx: Any, kind: str, source: dict[str, Any], **params: Any) -> str:
    """A job on a dataset source, the source checked and stored as the API does."""
    stored = check_source(source, kind, storage_url=ctx.settings.resolved_storage_url())
    return create_job(ctx, kind, source=stored, params=params or None)


def put_shards(s3_env: Any, shards: dict[str, bytes], prefix: str = "shards/") -> None:
    client = s3_env.client()
    for name, data in shards.items():
        client.put_object(Bucket=s3_env.bucket, Key=prefix + name, Body=data)


def bucket_keys(s3_env: Any) -> list[str]:
    listing = s3_env.client().list_objects_v2(Bucket=s3_env.bucket)
    return [obj["Key"] for obj in listing.get("Contents", ())]


def outputs(ctx: Any, job_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    prefix = f"jobs/{job_id}"
    return (
        read_jsonl(ctx.storage.get_bytes(f"{prefix}/results.jsonl")),
        read_jsonl(ctx.storage.get_bytes(f"{prefix}/errors.jsonl")),
    )


def test_webdataset_shards_on_s3_by_brace_pattern(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(chunk_size="4")
    shards, captions = img2dataset_shards(3, 3)
    put_shards(s3_env, shards)
    before = bucket_keys(s3_env)
    pattern = f"s3://{s3_env.bucket}/shards/{{00000..00002}}.tar"
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": [pattern]},
                         prompt="Describe this photo. Its alt text was: {caption}")  # fmt: skip
    assert expand_source(ctx, job_id) == 11  # 9 samples, a corrupt one, one without image

    rows = get_items(ctx, job_id)
    first = rows[0]
    shard0 = f"s3://{s3_env.bucket}/shards/00000.tar"
    assert first.custom_id == "000000000"
    assert first.input["image"] == f"{shard0}#000000000.jpg"
    assert first.input["prompt"] == "Describe this photo. Its alt text was: picture 000000000"
    assert first.input["meta"] == {"key": "000000000", "caption": "picture 000000000",
                                   "txt": "picture 000000000"}  # fmt: skip
    offset, size = first.input["range"]  # the member's bytes inside the shard
    assert shards["00000.tar"][offset : offset + size] == jpeg(0)
    no_image = next(r for r in rows if r.input.get("key") == "00000_noimage")
    assert no_image.status == ItemStatus.FAILED
    assert (
        no_image.error == f"{shard0} sample 00000_noimage: has no image member (its members: json)"
    )

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 9, 2)
    results, errors = outputs(ctx, job_id)
    assert {r["custom_id"] for r in results} == set(captions)  # joined back to the keys
    assert all(isinstance(r["caption"], str) for r in results)
    corrupt = next(e for e in errors if e["custom_id"] == "00000_corrupt")
    assert corrupt["error"].startswith(f"cannot read image {shard0}#00000_corrupt.jpg: ")
    assert bucket_keys(s3_env) == before  # nothing copied out of the shards

    # one sidecar per shard, keyed by __key__ in shard order, next to the manifests
    by_key = {r["custom_id"]: r["caption"] for r in results}
    for name, data in shards.items():
        key = f"jobs/{job_id}/sidecars/{s3_env.bucket}/shards/{name[:-4]}.captions.jsonl"
        lines = read_jsonl(ctx.storage.get_bytes(key))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            keys = list(dict.fromkeys(m.name.split(".")[0] for m in tar.getmembers()))
        assert [line["__key__"] for line in lines] == keys
        for line in lines:
            if line["status"] == "succeeded":
                assert line["caption"] == by_key[line["__key__"]]
            else:
                assert line["__key__"] in ("00000_corrupt", "00000_noimage") and line["error"]


def test_webdataset_prefix_resumes_inside_a_shard_with_a_ranged_read(
    make_ctx: Any, s3_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx()
    shards, _ = img2dataset_shards(2, 3)
    put_shards(s3_env, {**shards, "README.txt": b"not a shard"})
    source = {"webdataset": f"s3://{s3_env.bucket}/shards/"}
    whole = dataset_job(ctx, JobKind.CAPTION, source)
    assert expand_source(ctx, whole) == 8
    expected = [(r.input.get("file"), r.input.get("key")) for r in get_items(ctx, whole)]

    opened: list[tuple[str, int]] = []
    original = worker_datasets.Opener.open

    def spy(self: Any, data_file: Any, start: int = 0) -> Any:
        opened.append((data_file.name.rsplit("/", 1)[1], start))
        return original(self, data_file, start)

    monkeypatch.setattr(worker_datasets.Opener, "open", spy)
    resumed = dataset_job(ctx, JobKind.CAPTION, source)
    stored = get_items(ctx, whole)[:3]  # an expansion that stopped after three items
    add_items(ctx.database_url, ctx.app, resumed, JobKind.CAPTION,
              [NewItem(input=r.input, custom_id=r.custom_id, error=r.error) for r in stored],
              chunk_size=8, window=9)  # fmt: skip
    assert expand_source(ctx, resumed) == 5
    assert [(r.input.get("file"), r.input.get("key")) for r in get_items(ctx, resumed)] == expected
    assert opened == [("00000.tar", stored[2].input["next"]), ("00001.tar", 0)]
    assert stored[2].input["next"] > 0


def upload(ctx: Any, data: bytes, filename: str) -> str:
    row, _ = save_upload(ctx.database_url, ctx.storage, owner=constants.LOCAL_OWNER,
                         stream=io.BytesIO(data), filename=filename, purpose="dataset",
                         max_bytes=10_000_000)  # fmt: skip
    return row.id


def test_uploaded_shards_on_local_storage_and_a_broken_one(ctx: Any) -> None:
    shards, _ = img2dataset_shards(2, 2)
    cut = shards["00001.tar"][:2700]  # cut inside its third member's header
    ids = [upload(ctx, shards["00000.tar"], "00000.tar"), upload(ctx, cut, "00001.tar")]
    prompts = {"short": "One word for {caption}.", "long": "Describe {__key__}."}
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": ids}, prompts=prompts)
    expand_source(ctx, job_id)
    drain(ctx)
    job = get_job(ctx, job_id)
    results, errors = outputs(ctx, job_id)
    assert {r["custom_id"] for r in results} == {"000000000", "000000001", "000010000"}
    for line in results:
        assert set(line["captions"]) == {"short", "long"}
        assert line["input"]["prompts"]["long"] == f"Describe {line['custom_id']}."
    sidecar = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/sidecars/{ids[0]}.captions.jsonl"))
    assert [set(line) for line in sidecar if line["status"] == "succeeded"] == [
        {"__key__", "short", "long", "status"}
    ] * 2
    broken = next(e for e in errors if e["input"]["file"] == ids[1] and e["custom_id"] is None)
    assert broken["error"].startswith(f"shard {ids[1]} is not a readable tar archive after byte ")
    assert job.status == JobStatus.SUCCEEDED and job.failed == 3  # corrupt, no image, broken


def test_missing_template_field_and_bad_template(ctx: Any, s3_env: Any) -> None:
    shards, _ = img2dataset_shards(1, 2)
    put_shards(s3_env, shards)
    ref = f"s3://{s3_env.bucket}/shards/00000.tar"
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": ref}, prompt="Alt text: {alt}")
    expand_source(ctx, job_id)
    rows = get_items(ctx, job_id)
    assert all(r.status == ItemStatus.FAILED for r in rows)
    assert rows[0].error == (
        f"{ref} sample 000000000: the prompt template uses {{alt}}, which this item lacks"
    )
    bad = dataset_job(ctx, JobKind.CAPTION, {"webdataset": ref}, prompt="{caption.__class__}")
    expand_source(ctx, bad)
    drain(ctx)
    job = get_job(ctx, bad)
    assert job.status == JobStatus.FAILED and job.total == 0
    assert "'{caption.__class__}' is not a field name" in job.error


@contextmanager
def served_images(make_ctx: Any, s3_env: Any, count: int) -> Iterator[tuple[Any, str]]:
    """(ctx, base URL): `count` images at <base>/img/<i>.jpg on a loopback HTTP server the
    egress policy allows, and one at s3://<bucket>/pics/s3.jpg."""
    images = {f"/img/{i}.jpg": jpeg(i) for i in range(count)}
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="pics/s3.jpg", Body=jpeg(9))
    with image_server(images) as base:
        yield make_ctx(egress_allow_http="true", egress_allow=base.removeprefix("http://")), base


def test_csv_of_urls_over_loopback_http(make_ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    with served_images(make_ctx, s3_env, 4) as (ctx, base):
        rows = [{"key": f"k{i}", "url": f"{base}/img/{i}.jpg", "caption": f"alt {i}",
                 "width": "40"} for i in range(4)]  # fmt: skip
        rows.append({"key": "k4", "url": f"{base}/img/missing.jpg", "caption": "", "width": ""})
        rows.append({"key": "k5", "url": f"s3://{s3_env.bucket}/pics/s3.jpg", "caption": "s3",
                     "width": "1"})  # fmt: skip
        rows.append({"key": "k6", "url": "http://127.0.0.2/x.jpg", "caption": "", "width": ""})
        body = csv_text(rows) + b'k7,"only two",fields\n'
        client.put_object(Bucket=s3_env.bucket, Key="lists/a.csv", Body=body)
        client.put_object(Bucket=s3_env.bucket, Key="lists/b.csv",
                          Body=csv_text([{"key": "k8", "url": f"{base}/img/0.jpg",
                                          "caption": "again", "width": "2"}]))  # fmt: skip
        job_id = dataset_job(
            ctx,
            JobKind.CAPTION,
            {"csv": f"s3://{s3_env.bucket}/lists/*.csv", "image_column": "url"},
            prompt="Alt: {caption}. Describe it.",
        )
        assert expand_source(ctx, job_id) == 9
        drain(ctx)
    job = get_job(ctx, job_id)
    results, errors = outputs(ctx, job_id)
    assert [r["custom_id"] for r in results] == ["k0", "k1", "k2", "k3", "k5", "k8"]
    first = results[0]["input"]
    assert first["meta"] == {"key": "k0", "caption": "alt 0", "width": "40"}
    assert first["prompt"] == "Alt: alt 0. Describe it."
    assert (first["file"], first["row"]) == (f"s3://{s3_env.bucket}/lists/a.csv", 1)
    by_key = {e["custom_id"] or e["input"].get("row"): e["error"] for e in errors}
    assert "HTTP 404" in by_key["k4"]
    assert "refused by the egress policy" in by_key["k6"]
    assert by_key[8] == f"s3://{s3_env.bucket}/lists/a.csv row 8: has 3 fields; the header has 4"
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 6, 3)


def test_csv_prompts_for_a_generate_job(ctx: Any, s3_env: Any) -> None:
    body = csv_text([{"id": "fox", "text": "a red fox", "style": "oil"},
                     {"id": "boat", "text": "a boat", "style": "ink"}])  # fmt: skip
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="prompts.csv", Body=body)
    source = {"csv": f"s3://{s3_env.bucket}/prompts.csv", "key_column": "id",
              "prompt_column": "text"}  # fmt: skip
    job_id = dataset_job(ctx, JobKind.GENERATE, source, n=1)
    expand_source(ctx, job_id)
    drain(ctx)
    results, _ = outputs(ctx, job_id)
    assert [(r["custom_id"], r["input"]["prompt"]) for r in results] == [
        ("fox", "a red fox"),
        ("boat", "a boat"),
    ]
    assert results[0]["input"]["meta"] == {"id": "fox", "text": "a red fox", "style": "oil"}
    assert len(results[0]["images"]) == 1


def test_a_missing_column_or_file(ctx: Any, s3_env: Any) -> None:
    s3_env.client().put_object(Bucket=s3_env.bucket, Key="x.csv", Body=b"link,key\nhttps://a/b,1\n")
    job_id = dataset_job(ctx, JobKind.CAPTION, {"csv": f"s3://{s3_env.bucket}/x.csv"})
    expand_source(ctx, job_id)
    job = get_job(ctx, job_id)
    assert job.error == f"s3://{s3_env.bucket}/x.csv has no column 'url' (it has: link, key)"
    missing = f"s3://{s3_env.bucket}/shards/{{00000..00001}}.tar"
    job_id = dataset_job(ctx, JobKind.CAPTION, {"webdataset": missing})
    expand_source(ctx, job_id)
    rows = get_items(ctx, job_id)
    assert [r.status for r in rows] == [ItemStatus.FAILED, ItemStatus.FAILED]
    assert rows[0].error.startswith(f"cannot read shard s3://{s3_env.bucket}/shards/00000.tar: ")


def test_several_prompts_for_inline_items(ctx: Any) -> None:
    prompts = {"short": "One word.", "detailed": "Describe it."}
    job_id = create_job(
        ctx, JobKind.CAPTION, [{"image": "s3://b/a.png"}], params={"prompts": prompts}
    )
    rows = get_items(ctx, job_id)
    assert rows[0].input["prompts"] == {"short": "One word.", "detailed": "Describe it."}
    assert "prompt" not in rows[0].input


def test_tar_members_are_located_exactly() -> None:
    shards, _ = img2dataset_shards(1, 2)
    data = shards["00000.tar"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.getmember("000000001.jpg")
        assert tar.extractfile(member).read() == jpeg(1)  # type: ignore[union-attr]
    from worker.webdataset import samples

    found = {s.key: s for s in samples(io.BytesIO(data), "t", max_meta_bytes=1 << 20)}
    _, offset, size = found["000000001"].image  # type: ignore[union-attr, misc]
    assert (offset, size) == (member.offset_data, member.size)


def test_result_lines_carry_presigned_urls_on_s3(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(storage_url=s3_env.storage_url, result_url_expires="600")
    job_id = create_job(ctx, JobKind.GENERATE, ["a red fox"], params={"n": 2})
    drain(ctx)
    [line] = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    for image in line["images"]:
        assert "Expires=600" in image["url"] or "X-Amz-Expires=600" in image["url"]
        got = httpx.get(image["url"])  # no API in the way: straight from the S3 server
        assert got.status_code == 200 and got.content == ctx.storage.get_bytes(image["key"])


def test_local_result_lines_have_no_urls(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.GENERATE, ["a boat"])
    drain(ctx)
    [line] = read_jsonl(ctx.storage.get_bytes(f"jobs/{job_id}/results.jsonl"))
    assert "url" not in line["images"][0]
