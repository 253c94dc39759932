"""HTTP request and response bodies, apart from the SQL models (names follow OpenAI's Batch
API where one exists: `custom_id`, `counts`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from janus_batch.states import JobKind


class SourceIn(BaseModel):
    """Where a job's items come from when they are not inline (exactly one field)."""

    model_config = ConfigDict(extra="forbid")

    s3_prefix: str | None = Field(
        default=None, description="Caption every image under s3://bucket/prefix/ (caption only)."
    )
    manifest: str | None = Field(
        default=None,
        description="A JSONL manifest, one item per line: s3://..., https://... or the id of an "
        "uploaded file (purpose=manifest).",
    )
    csv: str | list[str] | None = Field(
        default=None,
        description="CSV files, one item per row: s3:// objects, prefixes (ending in /), globs, "
        "{0000..0099} patterns or ids of uploaded files (purpose=dataset).",
    )
    parquet: str | list[str] | None = Field(
        default=None,
        description="Parquet files, one item per row, named like csv files; the image column "
        "holds URLs, image bytes or Hugging Face {bytes, path} structs (read from the file).",
    )
    webdataset: str | list[str] | None = Field(
        default=None,
        description="WebDataset .tar shards (caption only), named like csv files; a sample's "
        "image is read from inside its shard, its json/txt kept as metadata.",
    )
    image_column: str | None = Field(
        default=None,
        description="csv/parquet, caption: the column of images (URLs; in parquet also bytes "
        "or {bytes, path}; default url).",
    )
    key_column: str | None = Field(
        default=None,
        description="csv/parquet: the column kept as each item's custom_id (default key).",
    )
    prompt_column: str | None = Field(
        default=None,
        description="csv/parquet: each row's prompt (generate: default prompt; caption: optional).",
    )


class JobCreate(BaseModel):
    """A new job: a kind, job-wide params, and either inline `items` or a `source`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "caption",
                    "params": {"prompt": "Describe this image in one sentence."},
                    "items": [{"image": "s3://photos/cat.jpg", "custom_id": "cat"}],
                },
                {
                    "kind": "generate",
                    "params": {"n": 2, "cfg_weight": 5.0, "format": "png"},
                    "items": [{"prompt": "a red fox in snow", "seed": 42}],
                },
                {"kind": "caption", "source": {"s3_prefix": "s3://photos/2024/"}},
                {
                    "kind": "caption",
                    "params": {"prompt": "Describe this photo. Its alt text was: {caption}"},
                    "source": {"webdataset": "s3://laion/shards/{00000..00999}.tar"},
                },
            ]
        },
    )

    kind: JobKind
    model: str | None = Field(
        default=None,
        description="The model to run the job on, by the public name the fleet serves it "
        "under (GET /readyz lists them under `models`). Default: the deployment's default "
        "model. An unknown name is refused with 422 listing the served ones.",
        examples=["janus-pro-7b"],
    )
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Higher runs first among jobs of the same kind on a worker (default 0).",
    )
    params: dict[str, Any] | None = Field(
        default=None,
        description="caption: prompt, max_new_tokens, temperature, top_p; "
        "generate: n, cfg_weight, temperature, top_k, top_p, format (png|jpeg|webp), output "
        '({"format": "webdataset", "images_per_shard": 1000}: images in .tar shards).',
    )
    items: list[Any] | None = Field(
        default=None,
        description="Inline items. caption: {image, prompt?, seed?, custom_id?} (image = s3://, "
        "https:// or a file id); generate: {prompt, n?, seed?, cfg_weight?, temperature?, "
        "custom_id?}. Either kind: {custom_id, error} for an input the client could not send "
        "(an empty file): recorded as a failed item, never run.",
    )
    source: SourceIn | None = None
    label: str | None = Field(
        default=None,
        description="A short name of yours for the job (one line, at most 128 characters): "
        "shown in lists, the dashboard and Flower; filter with GET /v1/jobs?label=.",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="Your own string keys and values, kept and returned as given (at most 16 "
        "keys of 64 characters, values of 512).",
    )
    webhook_url: str | None = Field(
        default=None,
        description="POSTed the job object, signed, each time the job reaches a terminal "
        "status (README: Webhooks). Subject to the egress policy.",
    )
    completion_window: Any = Field(  # checked by the service: 422 naming the field
        default=None,
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
        description="How long the job may take from now: 30m, 24h, 7d, or seconds. Items not "
        "finished by then expire and the job ends expired with what it finished. Default: "
        "the server's JANUS_BATCH_DEFAULT_COMPLETION_WINDOW (none: never expires).",
        examples=["24h"],
    )
    expires_at: str | None = Field(
        default=None,
        max_length=64,
        description="Instead of completion_window: when the job must be done, ISO 8601 with a "
        "timezone (2026-12-04T10:00:00Z), in the future.",
    )


class JobRetry(BaseModel):
    """Which failed items to retry: all of them, or those whose error is of these classes."""

    model_config = ConfigDict(extra="forbid")

    errors: list[str] | None = Field(
        default=None,
        description="Error classes to retry: fetch, image, model, output, worker, lost (the "
        "item's worker was lost MAX_ATTEMPTS times), expired (the job's completion window "
        "ended), other. Default: every failed item that ran, and every expired one.",
        examples=[["fetch", "lost"]],
    )


class Counts(BaseModel):
    """Items by state; pending = total - the others."""

    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int = Field(default=0, description="Not finished within the job's completion window.")


class JobOutput(BaseModel):
    """Where the job's outputs are (URIs) and how to download its manifests (URLs)."""

    prefix: str
    results: str
    errors: str
    results_url: str | None
    errors_url: str | None


class Waiting(BaseModel):
    """Items of the job wait out a transient error (storage or an input host down): they are
    tried again by themselves, never failed for it."""

    since: datetime = Field(description="When the first of them met the error.")
    reason: str = Field(description="The last such error.")


class WebhookPublic(BaseModel):
    """Where a job's terminal statuses are posted, and how the last delivery went."""

    url: str
    state: str | None = Field(
        description="pending, retrying, delivered or failed (gave up); None until the job "
        "first ends."
    )
    attempts: int = Field(description="Attempts of the last delivery.")
    last_attempt_at: datetime | None
    last_response: int | None = Field(description="HTTP status of the last attempt.")
    last_error: str | None


class JobPublic(BaseModel):
    """A job as the API shows it (and as a webhook posts it)."""

    id: str
    object: str = "job"
    kind: str
    status: str
    label: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    params: dict[str, Any]
    source: dict[str, Any] | None
    counts: Counts
    expanded: bool = Field(description="False while a source is still being read into items.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items_per_second: float | None
    eta_seconds: float | None
    output: JobOutput
    error: str | None
    priority: int = 0
    retries: int = Field(default=0, description="Times its failed items were retried.")
    retried_at: datetime | None = None
    webhook: WebhookPublic | None = None
    expires_at: datetime | None = Field(
        default=None,
        description="End of the job's completion window (None: it never expires); a retry "
        "starts a fresh window of the same length.",
    )
    completion_window: str | None = Field(
        default=None, description="The window's length (24h), from the submit or last retry."
    )
    live_workers: int | None = Field(
        default=None,
        description="Live workers consuming this job's queue (single-job responses only); 0: "
        "nothing will run it until a worker starts.",
    )
    waiting: Waiting | None = Field(
        default=None,
        description="Set while items wait out a transient error (no ETA meanwhile).",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="What holds the job up, if anything the operator must fix (single-job "
        "responses only): e.g. items on expired leases with no sweeper running.",
    )


class JobsPublic(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` as `after` for the next page."""

    data: list[JobPublic]
    next_cursor: str | None
    has_more: bool


class ItemPublic(BaseModel):
    """One item of a job."""

    idx: int
    custom_id: str | None
    status: str
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    error_class: str | None = Field(
        default=None,
        description="A failed or expired item's error class (fetch, image, model, output, "
        "worker, lost, expired, other; input: it failed before it ran and is never retried), "
        "for POST .../retry.",
    )
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None


class ItemsPublic(BaseModel):
    """A page of items in index order; pass `next_cursor` as `after` for the next page."""

    data: list[ItemPublic]
    next_cursor: str | None
    has_more: bool


class FilePublic(BaseModel):
    """An uploaded file."""

    id: str
    object: str = "file"
    filename: str
    bytes: int
    purpose: str
    sha256: str
    created_at: datetime


class FilesPublic(BaseModel):
    """Uploaded files."""

    data: list[FilePublic]


class Deleted(BaseModel):
    """What a DELETE removed."""

    id: str
    object: str = Field(description="job.deleted or file.deleted")
    deleted: bool = True
    objects_removed: int = Field(
        default=0, description="Stored objects removed (results, images, manifests, the upload)."
    )
