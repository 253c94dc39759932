"""Parquet dataset sources captioned end to end through the real pipeline (expand, chunks on
the tiny engine, finalize), and results.parquet: a URL column served over loopback HTTP, a
bytes column, a Hugging Face {bytes, path} struct column, on S3 and uploaded; the images in
the file are read from their row group, never copied out."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from janus_batch.items import NewItem, add_items
from janus_batch.states import ItemStatus, JobKind, JobStatus
from tests.fixtures.datasets import jpeg
from tests.worker.helpers import create_job, drain, get_items, get_job
from tests.worker.test_datasets import bucket_keys, dataset_job, outputs, served_images, upload
from worker import datasets as worker_datasets
from worker.expand import expand_source

CORRUPT = b"\xff\xd8 not a jpeg"


def parquet_bytes(table: pa.Table, row_group_size: int = 2) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def run_job(ctx: Any, kind: str, source: dict[str, Any], **params: Any) -> tuple[str, Any]:
    """A dataset job expanded and run to its end: (job id, (results, errors))."""
    job_id = dataset_job(ctx, kind, source, **params)
    expand_source(ctx, job_id)
    drain(ctx)
    return job_id, outputs(ctx, job_id)


def results_table(ctx: Any, job_id: str) -> list[dict[str, Any]]:
    data = ctx.storage.get_bytes(f"jobs/{job_id}/results.parquet")
    pf = pq.ParquetFile(io.BytesIO(data))
    return pf.read().to_pylist()


def hf_table(count: int) -> pa.Table:
    """A Hugging Face image dataset's shard: `image` as {bytes, path}, `id`, `label`; row 2's
    image is corrupt."""
    images = [
        {"bytes": CORRUPT if i == 2 else jpeg(i), "path": f"img_{i}.jpg"} for i in range(count)
    ]
    return pa.table(
        {
            "id": [f"hf{i}" for i in range(count)],
            "image": images,
            "label": list(range(count)),
            "text": [f"a thing {i}" for i in range(count)],
        }
    )


def test_hf_struct_column_on_s3_read_from_row_groups(make_ctx: Any, s3_env: Any) -> None:
    ctx = make_ctx(chunk_size="3")
    data = parquet_bytes(hf_table(5))
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key="hf/train-00000.parquet", Body=data)
    client.put_object(Bucket=s3_env.bucket, Key="hf/README.md", Body=b"# not data")
    before = bucket_keys(s3_env)
    ref = f"s3://{s3_env.bucket}/hf/train-00000.parquet"
    job_id = dataset_job(
        ctx,
        JobKind.CAPTION,
        {"parquet": f"s3://{s3_env.bucket}/hf/", "image_column": "image", "key_column": "id"},
        prompt="It shows {text}. Describe it.",
    )
    assert expand_source(ctx, job_id) == 5
    first = get_items(ctx, job_id)[3]
    assert first.custom_id == "hf3"
    assert first.input["parquet"] == [1, 1, "image"]  # row group 1, its second row
    assert (first.input["file"], first.input["row"]) == (ref, 4)
    assert first.input["image"] == f"{ref}#row=4"
    assert first.input["meta"] == {"id": "hf3", "label": 3, "text": "a thing 3"}
    assert first.input["prompt"] == "It shows a thing 3. Describe it."

    drain(ctx)
    job = get_job(ctx, job_id)
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 4, 1)
    results, errors = outputs(ctx, job_id)
    assert [r["custom_id"] for r in results] == ["hf0", "hf1", "hf3", "hf4"]
    [corrupt] = errors
    assert corrupt["custom_id"] == "hf2"
    assert corrupt["error"].startswith(f"cannot read image {ref}#row=3: ")  # file and row
    assert bucket_keys(s3_env) == before  # nothing copied out of the file

    table = results_table(ctx, job_id)
    by_key = {r["custom_id"]: r["caption"] for r in results}
    assert [row["key"] for row in table] == ["hf0", "hf1", "hf2", "hf3", "hf4"]
    for row in table:
        assert row["model"] == job.model
        assert json.loads(row["params"]) == job.params
        if row["status"] == "succeeded":
            assert row["caption"] == by_key[row["custom_id"]] and row["error"] is None
        else:
            assert row["caption"] is None and row["error"] == corrupt["error"]


def test_uploaded_bytes_column_several_prompts_and_resume(
    make_ctx: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = make_ctx()
    table = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "jpg": [jpeg(10), None, jpeg(12), jpeg(13)],
            "caption": ["red", "none", "blue", "green"],
        }
    )
    file_id = upload(ctx, parquet_bytes(table), "shard.parquet")
    prompts = {"short": "One word for {caption}.", "long": "Describe {key}."}
    source = {"parquet": file_id, "image_column": "jpg"}
    job_id = dataset_job(ctx, JobKind.CAPTION, source, prompts=prompts)
    assert expand_source(ctx, job_id) == 4
    drain(ctx)
    results, errors = outputs(ctx, job_id)
    assert [r["custom_id"] for r in results] == ["a", "c", "d"]
    assert set(results[0]["captions"]) == {"short", "long"}
    assert errors[0]["error"] == f"cannot read image {file_id}#row=2: the cell has no bytes"
    rows = results_table(ctx, job_id)
    assert [(r["key"], r["status"]) for r in rows] == [
        ("a", "succeeded"),
        ("b", "failed"),
        ("c", "succeeded"),
        ("d", "succeeded"),
    ]
    assert rows[0]["caption_short"] == results[0]["captions"]["short"]
    assert rows[0]["caption_long"] == results[0]["captions"]["long"]

    # a redelivered expansion resumes after the last stored row, skipping whole row groups
    read: list[tuple[int, int | None]] = []
    original = worker_datasets.Opener.open

    def spy(self: Any, data_file: Any, start: int = 0, length: int | None = None) -> Any:
        read.append((start, length))
        return original(self, data_file, start, length)

    monkeypatch.setattr(worker_datasets.Opener, "open", spy)
    resumed = dataset_job(ctx, JobKind.CAPTION, source, prompts=prompts)
    stored = get_items(ctx, job_id)[:3]
    add_items(ctx.database_url, ctx.app, resumed, JobKind.CAPTION,
              [NewItem(input=r.input, custom_id=r.custom_id, error=r.error) for r in stored],
              chunk_size=8, window=9)  # fmt: skip
    assert expand_source(ctx, resumed) == 1
    assert [r.custom_id for r in get_items(ctx, resumed)] == ["a", "b", "c", "d"]
    data = parquet_bytes(table)
    footer, *rest = read  # the footer (the last 64 KiB: here the whole tiny file), then ranges
    assert footer[0] + (footer[1] or 0) == len(data)
    group0 = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    chunks = [group0.column(c) for c in range(group0.num_columns)]
    end0 = max((c.dictionary_page_offset or c.data_page_offset) + c.total_compressed_size
               for c in chunks)  # fmt: skip
    assert rest and all(start >= end0 and length for start, length in rest)  # group 1 only


def test_url_column_over_loopback_http_and_s3(make_ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    with served_images(make_ctx, s3_env, 3) as (ctx, base):
        table = pa.table(
            {
                "key": [0, 1, 2, 3, 4],
                "url": [
                    f"{base}/img/0.jpg",
                    f"{base}/img/1.jpg",
                    f"{base}/img/missing.jpg",
                    f"s3://{s3_env.bucket}/pics/s3.jpg",
                    f"{base}/img/2.jpg",
                ],
                "caption": ["zero", "one", "lost", "s3", "two"],
                "thumb": [b"x"] * 5,  # bytes are not kept as metadata
            }
        )
        for name in ("a.parquet", "b.parquet"):
            client.put_object(Bucket=s3_env.bucket, Key=f"lists/{name}", Body=parquet_bytes(table))
        job_id = dataset_job(
            ctx,
            JobKind.CAPTION,
            {"parquet": [f"s3://{s3_env.bucket}/lists/a*.parquet"]},
            prompt="Alt: {caption}.",
        )
        assert expand_source(ctx, job_id) == 5
        drain(ctx)
    job = get_job(ctx, job_id)
    results, errors = outputs(ctx, job_id)
    assert [r["custom_id"] for r in results] == ["0", "1", "3", "4"]
    assert results[0]["input"]["meta"] == {"key": 0, "caption": "zero"}
    assert results[0]["input"]["image"] == f"{base}/img/0.jpg"
    assert "HTTP 404" in errors[0]["error"] and errors[0]["custom_id"] == "2"
    assert (job.status, job.succeeded, job.failed) == (JobStatus.SUCCEEDED, 4, 1)
    images = [r["image"] for r in results_table(ctx, job_id)]
    assert images[3] == f"s3://{s3_env.bucket}/pics/s3.jpg"


def test_prompts_for_a_generate_job_and_bad_files(ctx: Any, s3_env: Any) -> None:
    client = s3_env.client()
    table = pa.table({"id": ["fox", "boat"], "text": ["a red fox", "a boat"]})
    client.put_object(Bucket=s3_env.bucket, Key="p.parquet", Body=parquet_bytes(table))
    client.put_object(Bucket=s3_env.bucket, Key="junk.parquet", Body=b"not parquet at all")
    source = {
        "parquet": [f"s3://{s3_env.bucket}/p.parquet", f"s3://{s3_env.bucket}/junk.parquet"],
        "key_column": "id",
        "prompt_column": "text",
    }
    job_id, (results, errors) = run_job(ctx, JobKind.GENERATE, source, n=1)
    prompts = [(r["custom_id"], r["input"]["prompt"]) for r in results]
    assert prompts == [("fox", "a red fox"), ("boat", "a boat")]
    assert errors[0]["error"].startswith(
        f"s3://{s3_env.bucket}/junk.parquet is not a readable parquet file: "
    )
    rows = results_table(ctx, job_id)
    assert rows[0]["prompt"] == "a red fox"
    assert rows[0]["images"] == [
        {"key": img["key"], "member": None, "seed": img["seed"]} for img in results[0]["images"]
    ]

    wrong = dataset_job(ctx, JobKind.CAPTION, {"parquet": f"s3://{s3_env.bucket}/p.parquet"})
    expand_source(ctx, wrong)
    assert get_job(ctx, wrong).error == (
        f"s3://{s3_env.bucket}/p.parquet has no column 'url' (it has: id, text)"
    )


def test_inline_jobs_get_results_parquet_too(ctx: Any) -> None:
    job_id = create_job(ctx, JobKind.CAPTION, [{"image": "s3://nope/missing.png"}])
    drain(ctx)
    [row] = results_table(ctx, job_id)
    assert row["status"] == "failed" and row["caption"] is None and row["error"]
    assert get_items(ctx, job_id)[0].status == ItemStatus.FAILED


def test_a_hugging_face_parquet_through_the_api(make_ctx: Any) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    ctx = make_ctx()
    data = parquet_bytes(hf_table(3))
    with TestClient(create_app()) as client:
        upload = client.post("/v1/files", files={"file": ("train-00000.parquet", data)},
                             data={"purpose": "dataset"})  # fmt: skip
        assert upload.status_code == 201, upload.text
        body = {
            "kind": "caption",
            "source": {
                "parquet": [upload.json()["id"]],
                "image_column": "image",
                "key_column": "id",
            },
        }
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        assert created.json()["source"]["parquet"] == [upload.json()["id"]]
        drain(ctx)
        job_id = created.json()["id"]
        got = client.get(f"/v1/jobs/{job_id}/files/results.parquet")
        assert got.status_code == 200, got.text
        wrong = {"kind": "caption", "source": {"parquet": "https://h/a.parquet"}}
        refused = client.post("/v1/jobs", json=wrong)
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "source.parquet"
    rows = pq.read_table(io.BytesIO(got.content)).to_pylist()
    assert [(r["key"], r["status"]) for r in rows] == [
        ("hf0", "succeeded"),
        ("hf1", "succeeded"),
        ("hf2", "failed"),
    ]
    assert isinstance(rows[0]["caption"], str) and "#row=3" in rows[2]["error"]


def test_results_parquet_is_written_in_row_groups(tmp_path: Any) -> None:
    from janus_batch.models import Item, Job
    from worker.results_table import ResultsTable

    job = Job(kind=JobKind.GENERATE, model="m", params={"n": 1, "seed": None})
    path = tmp_path / "results.parquet"
    with ResultsTable(path, job, row_group=2) as table:
        for idx in range(5):
            ok = idx != 3
            table.add(
                Item(
                    idx=idx,
                    custom_id=f"p{idx}",
                    input={"prompt": f"prompt {idx}", "key": idx},
                    status=ItemStatus.SUCCEEDED if ok else ItemStatus.FAILED,
                    result={"images": [{"key": f"k{idx}", "seed": idx, "uri": "u"}]}
                    if ok
                    else None,
                    error=None if ok else "model error: boom",
                )
            )
    pf = pq.ParquetFile(path)
    assert pf.metadata.num_row_groups == 3 and pf.metadata.num_rows == 5
    rows = pf.read().to_pylist()
    assert rows[3] == {"idx": 3, "custom_id": "p3", "key": "3", "prompt": "prompt 3",
                       "images": [], "model": "m", "params": '{"n":1,"seed":null}',
                       "status": "failed", "error": "model error: boom"}  # fmt: skip
    assert rows[4]["images"] == [{"key": "k4", "member": None, "seed": 4}]
