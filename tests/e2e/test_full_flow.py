"""The whole system, end to end: jobs submitted over HTTP to the real API (uvicorn), run by a
real Celery worker process on the tiny checkpoint, inputs and results on a real S3 server,
checked in S3 (with boto3), over HTTP and in the SQL rows - on SQLite and on PostgreSQL."""

from __future__ import annotations

import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from janus.seeds import derive_seed
from tests.e2e.helpers import (
    assert_counters_match_items,
    corrupt_inputs,
    get_json,
    jsonl,
    post_job,
    read_rows,
    s3_get,
    s3_keys,
    split_s3_uri,
    valid_inputs,
    wait_final,
)
from tests.fixtures.s3 import S3Env

IMAGE_SIZE = 64  # the tiny checkpoint's image size
QUESTION = "Describe this image in one sentence."
PROMPTS = [
    {"prompt": "a red fox sitting in the snow", "seed": 1234, "custom_id": "fox"},
    {"prompt": "a watercolor painting of a lighthouse at dusk", "custom_id": "lighthouse"},
    {"prompt": "a cat sleeping on a wooden table", "seed": 2**62 + 7, "custom_id": "cat"},
]
N = 2
READABLE_ERROR = re.compile(r"cannot (identify|read) image|truncated", re.IGNORECASE)


def test_full_job_flow(
    s3_stack_env: dict[str, str],
    s3_env: S3Env,
    input_bucket: str,
    database_url: str,
    tiny_checkpoint: Path,
    start_stack: Any,
) -> None:
    s3 = s3_env.client()
    valid, corrupt = valid_inputs(), corrupt_inputs()
    uris: dict[str, str] = {}
    for name, data in {**valid, **corrupt}.items():
        s3.put_object(Bucket=input_bucket, Key=f"photos/{name}", Body=data)
        uris[name] = f"s3://{input_bucket}/photos/{name}"

    stack = start_stack(s3_stack_env)
    with httpx.Client(base_url=stack.api_url, timeout=30) as http:
        caption = post_job(
            http,
            {
                "kind": "caption",
                "params": {"prompt": QUESTION, "max_new_tokens": 8},
                "items": [{"image": uri, "custom_id": name} for name, uri in uris.items()],
            },
        )
        generate = post_job(http, {"kind": "generate", "params": {"n": N}, "items": PROMPTS})
        assert caption["status"] == generate["status"] == "queued"
        assert caption["counts"]["total"] == 8 and generate["counts"]["total"] == 3

        children = stack.children
        caption = wait_final(http, caption["id"], children)
        generate = wait_final(http, generate["id"], children)

        check_caption_job(http, s3, s3_env, caption, uris, valid, corrupt)
        check_generate_job(http, s3, s3_env, generate, tiny_checkpoint)

    for job in (caption, generate):
        rows = read_rows(database_url, job["id"])
        assert rows.job.status == "succeeded"
        assert rows.job.finished_at is not None and rows.job.started_at is not None
        assert_counters_match_items(rows)
        assert all(item.attempts == 1 for item in rows.items), [i.attempts for i in rows.items]
        assert all(item.finished_at is not None for item in rows.items)
        assert all(item.lease_until is None for item in rows.items)
        results = s3_get(s3, job["output"]["results"])
        assert len(jsonl(results)) == rows.job.succeeded
    caption_rows = read_rows(database_url, caption["id"])
    assert caption_rows.by_status == {"succeeded": 6, "failed": 2}
    for item in caption_rows.items:
        if item.custom_id in corrupt:
            assert item.status == "failed" and item.result is None and item.error
        else:
            assert item.status == "succeeded" and item.error is None
            assert isinstance(item.result["caption"], str)
    assert read_rows(database_url, generate["id"]).by_status == {"succeeded": 3}

    worker_log = stack.worker.log.read_text(errors="replace")
    for job in (caption, generate):
        assert f"job={job['id']}" in worker_log, "the worker log does not name the job"


def check_caption_job(
    http: httpx.Client,
    s3: Any,
    s3_env: S3Env,
    job: dict[str, Any],
    uris: dict[str, str],
    valid: dict[str, bytes],
    corrupt: dict[str, bytes],
) -> None:
    job_id = job["id"]
    assert job["status"] == "succeeded", job  # partly failed: the counts tell
    assert job["counts"] == {
        "total": 8, "pending": 0, "running": 0, "succeeded": 6, "failed": 2, "cancelled": 0,
        "expired": 0,
    }  # fmt: skip
    assert job["error"] is None and job["expanded"] and job["eta_seconds"] == 0
    assert datetime.fromisoformat(job["started_at"]) <= datetime.fromisoformat(job["finished_at"])
    assert job["output"]["prefix"] == f"{s3_env.storage_url}/jobs/{job_id}"
    assert job["output"]["results"] == f"{s3_env.storage_url}/jobs/{job_id}/results.jsonl"

    # The two unreadable inputs: failed with a one-line message naming the image.
    failed = get_json(http, f"/v1/jobs/{job_id}/items", status="failed")
    assert not failed["has_more"]
    assert sorted(item["custom_id"] for item in failed["data"]) == sorted(corrupt)
    for item in failed["data"]:
        assert item["status"] == "failed" and item["attempts"] == 1 and item["result"] is None
        assert_readable(item["error"], uris[item["custom_id"]])
    errors_http = http.get(f"/v1/jobs/{job_id}/results", params={"errors": "true"})
    assert errors_http.status_code == 200, errors_http.text
    error_lines = jsonl(errors_http.content)
    assert sorted(line["custom_id"] for line in error_lines) == sorted(corrupt)
    for line in error_lines:
        assert line["status"] == "failed"
        assert line["input"]["image"] == uris[line["custom_id"]]
        assert_readable(line["error"], uris[line["custom_id"]])
    assert s3_get(s3, job["output"]["errors"]) == errors_http.content

    # The six captions: results.jsonl straight from S3, the same bytes as GET /results.
    stored = s3_get(s3, job["output"]["results"])
    streamed = http.get(f"/v1/jobs/{job_id}/results")
    assert streamed.status_code == 200, streamed.text
    assert streamed.content == stored
    assert httpx.get(job["output"]["results_url"]).content == stored  # presigned URL
    lines = jsonl(stored)
    assert [line["custom_id"] for line in lines] == list(valid)  # idx order = submit order
    assert [line["idx"] for line in lines] == list(range(len(valid)))
    for line in lines:
        assert line["status"] == "succeeded"
        assert line["input"]["image"] == uris[line["custom_id"]]
        assert line["input"]["prompt"] == QUESTION
        assert isinstance(line["caption"], str) and line["caption"].strip(), line
        assert line["params"]["max_new_tokens"] == 8

    # Every item over HTTP agrees with the manifest.
    items = get_json(http, f"/v1/jobs/{job_id}/items")["data"]
    assert [item["status"] for item in items] == ["succeeded"] * 6 + ["failed"] * 2
    assert [item["result"]["caption"] for item in items[:6]] == [line["caption"] for line in lines]


def assert_readable(error: str | None, uri: str) -> None:
    """A message a person can act on: names the input, says why, no traceback."""
    assert error, "no error recorded"
    assert uri in error, error
    assert READABLE_ERROR.search(error), error
    assert "Traceback" not in error and "\n" not in error and len(error) < 500, error


def check_generate_job(
    http: httpx.Client, s3: Any, s3_env: S3Env, job: dict[str, Any], tiny_checkpoint: Path
) -> None:
    job_id = job["id"]
    assert job["status"] == "succeeded", job
    assert job["counts"] == {
        "total": 3, "pending": 0, "running": 0, "succeeded": 3, "failed": 0, "cancelled": 0,
        "expired": 0,
    }  # fmt: skip
    stored = s3_get(s3, job["output"]["results"])
    assert http.get(f"/v1/jobs/{job_id}/results").content == stored
    lines = jsonl(stored)
    assert [line["idx"] for line in lines] == [0, 1, 2]
    assert jsonl(s3_get(s3, job["output"]["errors"])) == []

    bucket, base = split_s3_uri(s3_env.storage_url)
    recorded_keys = []
    for line, sent in zip(lines, PROMPTS, strict=True):
        assert line["custom_id"] == sent["custom_id"]
        assert line["model"] == str(tiny_checkpoint)
        assert line["format"] == "png"
        seed = line["input"]["seed"]
        assert isinstance(seed, int) and 0 <= seed < 2**63
        if "seed" in sent:
            assert seed == sent["seed"]
        images = line["images"]
        assert [image["index"] for image in images] == list(range(N))
        assert images[0]["seed"] == seed
        for image in images:
            k = image["index"]
            assert image["seed"] == derive_seed(seed, k)
            assert image["key"] == f"jobs/{job_id}/images/{line['idx']:08d}_{k}.png"
            assert image["uri"] == f"s3://{bucket}/{base}/{image['key']}"
            recorded_keys.append(f"{base}/{image['key']}")
            check_png(s3_get(s3, image["uri"]), line, image, job_id)
    # The API serves the same bytes (streamed from S3), and a clean 404 for a missing one.
    first = lines[0]["images"][0]
    served = http.get(f"/v1/jobs/{job_id}/files/{first['key']}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == s3_get(s3, first["uri"])
    missing = http.get(f"/v1/jobs/{job_id}/files/images/00000009_0.png")
    assert missing.status_code == 404, missing.text
    drawn = lines[1]["input"]["seed"]
    assert drawn not in (PROMPTS[0]["seed"], PROMPTS[2]["seed"])
    # Exactly the recorded objects, nothing more (no duplicate or stray uploads).
    assert s3_keys(s3, bucket, f"{base}/jobs/{job_id}/images/") == sorted(recorded_keys)
    assert len(recorded_keys) == 3 * N


def check_png(data: bytes, line: dict[str, Any], image: dict[str, Any], job_id: str) -> None:
    """A decodable PNG of the model's size whose text chunks carry its provenance."""
    with Image.open(io.BytesIO(data)) as png:
        png.verify()
    with Image.open(io.BytesIO(data)) as png:
        png.load()
        assert png.format == "PNG"
        assert png.size == (IMAGE_SIZE, IMAGE_SIZE)
        text = dict(png.text)
    assert text["seed"] == str(image["seed"])
    assert text["prompt"] == line["input"]["prompt"]
    assert text["index"] == str(image["index"])
    assert text["job_id"] == job_id
    assert text["item_idx"] == str(line["idx"])
