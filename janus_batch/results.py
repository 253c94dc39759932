"""The lines of a job's results.jsonl and errors.jsonl, built in one place.

The worker's finalize writes the files with these functions and the API streams the same
lines from SQL while a job runs, so a partial listing and the final manifest never differ.

Result line (succeeded items), one JSON object per line, in item order; the item's result
(the worker's `{"caption": text}`, `{"captions": {name: text}}` or
`{"images": [{"key", "uri", "seed", "index"}], "format"}`) sits between the input and the
job's model:
    {"custom_id", "idx", "input", "caption" | "captions" | "images" + "format", "model",
     "params", "status"}
With a `presign` function (S3 storage) each image entry also carries `url`, a presigned GET
that downloads it without the API (valid JANUS_BATCH_RESULT_URL_EXPIRES seconds from when the
line was written).
Error line (failed, cancelled and expired items): {"custom_id", "idx", "input", "error", "status"}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from janus_batch.items import iter_items
from janus_batch.models import Item
from janus_batch.states import ItemStatus
from janus_batch.storage import Storage

RESULT_STATUSES = (ItemStatus.SUCCEEDED,)
ERROR_STATUSES = (ItemStatus.FAILED, ItemStatus.CANCELLED, ItemStatus.EXPIRED)
PAGE = 1000


class JobLike(Protocol):
    """What a line needs from a job (a `Job` row fits)."""

    id: str
    model: str
    params: dict[str, Any]


Presign = Callable[[str], str | None]
"""A storage key -> a presigned download URL, or None where the storage has none (local)."""


def result_line(job: JobLike, item: Item, presign: Presign | None = None) -> dict[str, Any]:
    """The results.jsonl entry of a succeeded item: its result (`caption`, `captions`, or
    `images` and `format`) between the input and the job's model and params; with `presign`,
    a `url` on each image."""
    result = dict(item.result or {})
    if presign is not None and isinstance(result.get("images"), list):
        result["images"] = [_signed(entry, presign) for entry in result["images"]]
    return {
        "custom_id": item.custom_id,
        "idx": item.idx,
        "input": item.input,
        **result,
        "model": job.model,
        "params": job.params,
        "status": str(item.status),
    }


def presigner(storage: Storage, expires: int) -> Presign:
    """Presigned GET URLs of `storage` valid `expires` seconds (None on local storage)."""
    return lambda key: storage.presigned_url(key, expires)


def _signed(entry: Any, presign: Presign) -> Any:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        return entry
    url = presign(entry["key"])
    return {**entry, "url": url} if url else entry


def error_line(item: Item) -> dict[str, Any]:
    """The errors.jsonl entry of a failed, cancelled or expired item."""
    return {
        "custom_id": item.custom_id,
        "idx": item.idx,
        "input": item.input,
        "error": item.error,
        "status": str(item.status),
    }


def encode_line(line: dict[str, Any]) -> bytes:
    """One JSONL line (UTF-8, newline-terminated)."""
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def iter_job_lines(
    database_url: str,
    job: JobLike,
    *,
    errors: bool = False,
    page_size: int | None = None,
    presign: Presign | None = None,
) -> Iterator[bytes]:
    """Encoded result lines (or error lines) of a job from SQL, in index order (image URLs
    presigned by `presign`, when given).

    Reads the items page by page (a short transaction each), so it can stream millions of
    rows; a running job gives the lines of the items final so far.
    """
    statuses = [s.value for s in (ERROR_STATUSES if errors else RESULT_STATUSES)]
    for item in iter_items(database_url, job.id, statuses=statuses, page_size=page_size or PAGE):
        yield encode_line(error_line(item) if errors else result_line(job, item, presign))
