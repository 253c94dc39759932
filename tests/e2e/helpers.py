"""Helpers of the end-to-end tests: plain HTTP calls, waiting for a job with the processes'
logs at hand, input images, reading S3 and the SQL rows behind the code's back."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from sqlalchemy import func, select

from janus_batch.db import session_scope
from janus_batch.models import Item, Job
from janus_batch.ops.stack import Child

FINAL = {"succeeded", "failed", "cancelled"}


def logs(*children: Child, lines: int = 60) -> str:
    """The last lines of each child's log, for failure messages."""
    return "\n".join(f"--- {c.name} (exit {c.proc.poll()}) ---\n{c.tail(lines)}" for c in children)


def post_job(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """POST /v1/jobs; the 202 body."""
    response = http.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def get_json(http: httpx.Client, path: str, **params: Any) -> Any:
    response = http.get(path, params=params)
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


def wait_final(
    http: httpx.Client, job_id: str, children: Iterable[Child], timeout: float = 240.0
) -> dict[str, Any]:
    """Poll GET /v1/jobs/{id} until the job is final; fail early if a process died."""
    children = list(children)
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = get_json(http, f"/v1/jobs/{job_id}")
        if job["status"] in FINAL:
            return job
        for child in children:
            if child.proc.poll() is not None:
                raise AssertionError(f"{child.name} exited while waiting:\n{logs(*children)}")
        time.sleep(0.3)
    raise AssertionError(
        f"job {job_id} not final after {timeout:.0f}s (last: {job.get('status')} "
        f"{job.get('counts')})\n{logs(*children)}"
    )


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def split_s3_uri(uri: str) -> tuple[str, str]:
    assert uri.startswith("s3://"), uri
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def s3_get(client: Any, uri: str) -> bytes:
    bucket, key = split_s3_uri(uri)
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", ())]
    return sorted(keys)


# -- input images -------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    """A non-flat image of `mode` (so a decoder has something to chew on)."""
    rgb = Image.linear_gradient("L").resize(size).convert("RGB")
    r, g, b = rgb.split()
    rgb = Image.merge("RGB", (r, g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), b.rotate(90)))
    if mode == "RGB":
        return rgb
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(size).rotate(45)
        return Image.merge("RGBA", (*rgb.split(), alpha))
    if mode == "P":
        return rgb.quantize(colors=16)
    if mode == "I;16":
        return Image.linear_gradient("L").resize(size).point(lambda v: v * 257).convert("I;16")
    return rgb.convert(mode)


def valid_inputs() -> dict[str, bytes]:
    """Six valid small images of different sizes, modes and formats, by object name."""
    return {
        "rgb.jpg": encode(gradient("RGB", (40, 30)), "JPEG", quality=90),
        "rgba.png": encode(gradient("RGBA", (32, 48)), "PNG"),
        "grey.png": encode(gradient("L", (20, 20)), "PNG"),
        "palette.gif": encode(gradient("P", (50, 18)), "GIF"),
        "cmyk.jpg": encode(gradient("CMYK", (24, 24)), "JPEG"),
        "deep16.png": encode(gradient("I;16", (16, 40)), "PNG"),
    }


def corrupt_inputs() -> dict[str, bytes]:
    """Two inputs that are not usable images: a truncated JPEG, a text file named .png."""
    jpeg = encode(gradient("RGB", (64, 64)), "JPEG", quality=95)
    return {
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "notes.png": b"this is a shopping list, not a picture:\n- eggs\n- milk\n",
    }


# -- SQL behind the API's back -----------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A job row and its items (index order), and the items counted by status in SQL."""

    job: Job
    items: list[Item]
    by_status: dict[str, int]


def read_rows(database_url: str, job_id: str) -> Rows:
    with session_scope(database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None, job_id
        items = list(session.scalars(select(Item).where(Item.job_id == job_id).order_by(Item.idx)))
        by_status = dict(
            session.execute(
                select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)
            ).all()
        )
    return Rows(job, items, {str(k): int(v) for k, v in by_status.items()})


def assert_counters_match_items(rows: Rows) -> None:
    """The job's counters equal a COUNT ... GROUP BY status over its items."""
    job = rows.job
    assert job.total == len(rows.items) == sum(rows.by_status.values())
    assert job.succeeded == rows.by_status.get("succeeded", 0)
    assert job.failed == rows.by_status.get("failed", 0)
    assert job.cancelled == rows.by_status.get("cancelled", 0)
    assert rows.by_status.get("pending", 0) == rows.by_status.get("running", 0) == 0
