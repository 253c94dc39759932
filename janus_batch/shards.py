"""WebDataset output shards of a generate job (`params.output`): the option and the names.

A generate job with `params.output = {"format": "webdataset", "images_per_shard": N}` writes
its images into `.tar` shards instead of one object per image: each chunk of the job is one
shard, written by the worker that ran it (`worker.shards`), so its chunks hold
`images_per_shard // params.n` items (`chunk_items`). A shard is named by its chunk's first
item and that item's attempt (`shard_key`), so a chunk that runs again never overwrites a
shard other items' results point to. Standard library only: the API, the worker and the
dashboard use it.
"""

from __future__ import annotations

from typing import Any

WEBDATASET = "webdataset"
SHARDS_DIR = "shards"
DEFAULT_IMAGES_PER_SHARD = 1000
MAX_IMAGES_PER_SHARD = 10_000
CONTENT_TYPE = "application/x-tar"


def images_per_shard(params: dict[str, Any] | None) -> int | None:
    """The job's images per shard when it writes WebDataset shards, else None."""
    output = (params or {}).get("output")
    if not isinstance(output, dict) or output.get("format") != WEBDATASET:
        return None
    return int(output.get("images_per_shard") or DEFAULT_IMAGES_PER_SHARD)


def chunk_items(params: dict[str, Any] | None, default: int) -> int:
    """Items per chunk message of a job: `default` (JANUS_BATCH_CHUNK_SIZE), or for a job
    writing shards as many items as fill one shard with the job's `n` images each."""
    per_shard = images_per_shard(params)
    if per_shard is None:
        return default
    n = int((params or {}).get("n") or 1)
    return max(1, per_shard // max(1, n))


def shard_key(output_prefix: str, first_idx: int, attempt: int) -> str:
    """The storage key of the shard of a chunk whose first item is `first_idx`, claimed for
    its `attempt`-th time (unique per claim: a re-run chunk writes a new shard)."""
    return f"{output_prefix.rstrip('/')}/{SHARDS_DIR}/{first_idx:08d}-{attempt}.tar"


def sample_key(idx: int, k: int) -> str:
    """The WebDataset `__key__` of image `k` of item `idx` (its members: `<key>.png`,
    `<key>.json`)."""
    return f"{idx:08d}_{k}"
