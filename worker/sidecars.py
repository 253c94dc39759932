"""Per-shard caption sidecars of a WebDataset job, written at finalize next to its manifests.

    <output_prefix>/sidecars/<bucket>/<shard key without .tar>.captions.jsonl   (s3:// shards)
    <output_prefix>/sidecars/<file id>.captions.jsonl                        (uploaded shards)
    <output_prefix>/sidecars/_/<sha256 of the shard, 16 hex>-<name>.captions.jsonl
        (a shard whose own name is no valid storage key: over 1024 bytes with the prefix, a
        segment over 255 bytes, a backslash, an empty, `.` or `..` segment)
    <output_prefix>/sidecars/index.jsonl   {"shard": <as named>, "sidecar": <key>} per shard

One JSON line per sample of the shard, in shard order, keyed by `__key__` as WebDataset
names it, so a trainer reads a shard and its captions side by side:
    {"__key__": "000123", "caption": "...", "status": "succeeded"}
    {"__key__": "000124", "short": "...", "detailed": "...", "status": "succeeded"}  # prompts
    {"__key__": "000125", "status": "failed", "error": "cannot read image ..."}
A job's items are stored shard after shard, so the items are read once in index order and
each shard's lines go to a temporary file, uploaded when the next shard starts: one shard's
lines on disk, one page of items in memory, whatever the job's size.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from janus_batch import datasets
from janus_batch.files import safe_filename
from janus_batch.items import iter_items
from janus_batch.models import Item, Job
from janus_batch.results import encode_line
from janus_batch.states import ItemStatus
from janus_batch.storage import validate_key
from worker.context import Context

log = logging.getLogger(__name__)

SUFFIX = ".captions.jsonl"
INDEX = "index.jsonl"
NAME_BYTES = 100
"""The most of a shard's base name a hashed sidecar name keeps (ASCII after `safe_filename`)."""
CONTENT_TYPE = "application/x-ndjson"


def sidecar_key(output_prefix: str, shard: str) -> str:
    """Where the sidecar of `shard` (`s3://bucket/key.tar` or a file id) goes: under its own
    name when that makes a valid storage key, else under a name derived from its hash (always
    valid; no S3 bucket is named `_`, so the two never meet)."""
    folder = f"{output_prefix.rstrip('/')}/sidecars"
    name = shard.removeprefix("s3://").removesuffix(".tar")
    try:
        return validate_key(f"{folder}/{name}{SUFFIX}")
    except ValueError:
        digest = hashlib.sha256(shard.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        base = safe_filename(name.replace("\\", "/"))[:NAME_BYTES]
        return validate_key(f"{folder}/_/{digest}-{base}{SUFFIX}")


def sidecar_line(item: Item) -> dict[str, Any]:
    """The sidecar entry of one sample: its key, its caption column(s) or error, status."""
    line: dict[str, Any] = {"__key__": (item.input or {}).get("key")}
    result = item.result or {}
    if item.status == ItemStatus.SUCCEEDED:
        if "captions" in result:
            line.update(result["captions"])
        else:
            line["caption"] = result.get("caption")
    line["status"] = str(item.status)
    if item.status != ItemStatus.SUCCEEDED:
        line["error"] = item.error
    return line


def write_sidecars(ctx: Context, job: Job, on_page: Callable[[Session], None] | None = None) -> int:
    """Write the sidecars of a WebDataset job (nothing for other jobs); returns how many.
    A sample whose shard could not be read at all has no key and no line."""
    if datasets.source_format(job.source or {}) != "webdataset":
        return 0
    written = 0
    with (
        tempfile.TemporaryDirectory(prefix="janus-sidecars-") as tmp,
        open(Path(tmp) / INDEX, "wb") as index,
    ):
        path = Path(tmp) / "sidecar.jsonl"
        shard: str | None = None
        out: IO[bytes] | None = None
        try:
            for item in iter_items(ctx.database_url, job.id, on_page=on_page):
                value = item.input or {}
                if value.get("key") is None or value.get("file") is None:
                    continue
                if value["file"] != shard:
                    if out is not None:
                        out.close()
                        _upload(ctx, job, shard, path, index)
                        written += 1
                    shard, out = value["file"], open(path, "wb")  # noqa: SIM115 - closed below
                assert out is not None
                out.write(encode_line(sidecar_line(item)))
        finally:
            if out is not None:
                out.close()
        if out is not None:
            _upload(ctx, job, shard, path, index)
            written += 1
        index.close()
        if written:
            index_key = f"{job.output_prefix.rstrip('/')}/sidecars/{INDEX}"
            ctx.storage.put_file(index_key, Path(tmp) / INDEX, CONTENT_TYPE)
    log.info("job=%s wrote %d shard sidecars", job.id, written)
    return written


def _upload(ctx: Context, job: Job, shard: str | None, path: Path, index: IO[bytes]) -> None:
    assert shard is not None
    key = sidecar_key(job.output_prefix, shard)
    ctx.storage.put_file(key, path, CONTENT_TYPE)
    index.write(encode_line({"shard": shard, "sidecar": key}))
