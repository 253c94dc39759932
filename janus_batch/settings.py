"""One settings class for the API, the worker and the operator commands, read from
`JANUS_BATCH_*` variables. The CLI's job commands are HTTP clients and read only
JANUS_BATCH_API_URL / JANUS_BATCH_API_KEY, as options (janus_batch/client/cli/common.py).

Never read at import time: call `get_settings()` (cached); tests clear it with
`get_settings.cache_clear()` after changing the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "deepseek-community/Janus-Pro-1B"
DEFAULT_MAX_NEW_TOKENS = 128
"""A caption's length in tokens when neither the request nor JANUS_BATCH_MAX_NEW_TOKENS says."""
MAX_MODEL_NAME = 512
"""Longest public model name (the jobs.model column)."""
MAX_NEW_TOKENS_LIMIT = 1024
"""The longest caption a job may ask for (params.max_new_tokens) or the setting may default to."""


class Settings(BaseSettings):
    """Configuration of janus-batch. Every field is read from `JANUS_BATCH_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="JANUS_BATCH_", extra="ignore")

    data_dir: Path = Field(
        default=Path("janus-batch-data"),
        description="Folder for the embedded defaults: the SQLite file and local results.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the job table, e.g. postgresql+psycopg://user@host/db. "
        "Default: a SQLite file in data_dir.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker (Redis) URL."
    )
    queue_prefix: str = Field(
        default="",
        description="Prefix of every Redis key Celery uses (kombu global_keyprefix), to share "
        "one Redis between deployments.",
    )
    storage_url: str | None = Field(
        default=None,
        description="Where inputs and results go: s3://bucket/prefix or a local folder "
        "(path or file://). Default: data_dir/results.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, R2, Ceph); unset for AWS."
    )
    s3_region: str | None = Field(default=None, description="S3 region name.")
    model: str = Field(
        default=DEFAULT_MODEL, description="Janus-Pro checkpoint: hub id or local directory."
    )
    model_name: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="Worker: the public name under which it serves MODEL, what jobs put in "
        "`model` (e.g. janus-pro-7b). Default: MODEL as written.",
    )
    default_model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="The model of jobs that name none (a public name). Default: this "
        "process's MODEL_NAME or MODEL. In a fleet of several models set it alike in the API "
        "and every worker: its chunks use the plain queues janus.caption / janus.generate.",
    )
    served_models: str = Field(
        default="",
        description="API: public names (comma-separated) accepted in a job's `model` even "
        "while no live worker serves them (their jobs wait for one); live workers' models and "
        "DEFAULT_MODEL are always accepted.",
    )
    device: str = Field(default="auto", description="auto | cuda | cuda:N | mps | cpu.")
    dtype: str = Field(default="auto", description="auto | bfloat16 | float16 | float32.")
    torch_threads: int | None = Field(
        default=None, description="CPU threads for torch in a worker (default: torch's own)."
    )
    batch_rows: int = Field(
        default=16, ge=1, description="Maximum rows per forward pass (a guided image is 2 rows)."
    )
    chunk_size: int = Field(
        default=32, ge=1, description="Items per queue message (one Celery task)."
    )
    dispatch_window: int = Field(
        default=4,
        ge=1,
        description="Chunk messages of one job open (queued or running) per live worker of "
        "its kind; each finished chunk releases the job's next one, so jobs interleave and a "
        "small job never waits for a big one to drain.",
    )
    pass_wait_ms: float = Field(
        default=30.0,
        ge=0,
        description="How long the engine waits for more ready requests before running a "
        "part-full forward pass.",
    )
    engine: str = Field(
        default="janus",
        description="The worker's engine: janus (the model), or module:function returning an "
        "engine for the settings (bench.simulated_engine:load_simulated measures the "
        "pipeline without a GPU).",
    )
    max_new_tokens: int = Field(
        default=DEFAULT_MAX_NEW_TOKENS,
        ge=1,
        le=MAX_NEW_TOKENS_LIMIT,
        description="Caption length in tokens of a job whose params leave max_new_tokens unset.",
    )
    max_inline_items: int = Field(
        default=10_000, ge=1, description="Most items accepted inline in POST /v1/jobs."
    )
    max_n: int = Field(default=16, ge=1, description="Most images per generate item.")
    max_prompt_chars: int = Field(default=4000, ge=1, description="Longest prompt accepted.")
    max_upload_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest file accepted by POST /v1/files."
    )
    max_outstanding_items: int = Field(
        default=0,
        ge=0,
        description="Quota: most items a key may have pending or running in its unfinished "
        "jobs; a submit or retry past it gets 429. The default of keys without their own "
        "(`keys create` or `keys update --max-outstanding-items`) and of open mode; 0: unlimited.",
    )
    jobs_per_minute: int = Field(
        default=0,
        ge=0,
        description="Quota: most jobs a key may submit in any 60 seconds (429 past it). The "
        "default of keys without their own and of open mode; 0: unlimited.",
    )
    upload_bytes_per_day: int = Field(
        default=0,
        ge=0,
        description="Quota: most bytes a key may upload (POST /v1/files, duplicates free) in "
        "any 24 hours (429 past it). The default of keys without their own and of open mode; "
        "0: unlimited.",
    )
    auth_mode: Literal["open", "keys"] = Field(
        default="open",
        description="open: single user, no keys (embedded default); keys: every request needs "
        "an API key created with `janus-batch keys create`.",
    )
    lease_seconds: int = Field(
        default=900,
        ge=10,
        description="How long a worker owns claimed items before the "
        "sweeper may hand them to another worker.",
    )
    sweep_interval: float = Field(
        default=60.0, gt=0, description="Seconds between sweeper runs (Celery beat)."
    )
    stale_pending_seconds: int = Field(
        default=600, ge=1, description="A pending item untouched this long is re-enqueued."
    )
    visibility_timeout: int = Field(
        default=7200,
        ge=60,
        description="Redis transport visibility timeout; must exceed the longest chunk.",
    )
    fetch_concurrency: int = Field(default=8, ge=1, description="Parallel input downloads.")
    egress_allow_http: bool = Field(
        default=False,
        description="Fetch plain http:// inputs and manifests too (default: https:// only).",
    )
    egress_allow: str = Field(
        default="",
        description="Hosts, host:port, addresses or CIDR networks (comma-separated) that "
        "user-named URLs may reach although not public, e.g. an on-prem MinIO: "
        "minio.internal:9000,10.20.0.0/16. Every other loopback, private, link-local, CGNAT, "
        "multicast or reserved address is refused (README, Security).",
    )
    max_image_pixels: int = Field(
        default=16 * 1024 * 1024,
        ge=1,
        description="Largest input image in pixels (4096x4096; ~64 MiB decoded), read from its "
        "header before decoding; a JPEG counts at the reduced scale it is decoded at. A larger "
        "image fails its item. Also bounds the pixels a process decodes at once (README, "
        "Security).",
    )
    result_url_expires: int = Field(
        default=7 * 24 * 3600,
        ge=60,
        le=7 * 24 * 3600,
        description="Seconds the presigned URL of each output image in results.jsonl (S3 "
        "storage) stays valid, counted from when the line is written (7 days, S3's maximum).",
    )
    max_manifest_line_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Longest manifest line; a longer one becomes a failed item and is not "
        "held in memory.",
    )
    max_row_group_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Most uncompressed bytes of the columns a worker reads from one parquet "
        "row group (at expansion, or an image column when captioning); a larger row group "
        "fails its items, unread.",
    )
    upload_concurrency: int = Field(
        default=8,
        ge=1,
        description="Parallel result uploads per worker process (its outtake pool has twice as "
        "many threads, so encoding overlaps uploading).",
    )
    png_compress_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="zlib level of generated PNGs: 1 encodes ~1.25x faster than Pillow's 6 for "
        "~7% larger files; 0 is 2.5x faster for 1.45x the size (README, Performance).",
    )
    max_retries: int = Field(
        default=3, ge=0, description="Retries (with backoff) of transient fetch/upload errors."
    )
    retry_delay_max: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait before an item deferred by a transient error (storage or "
        "an input host down) is tried again; waits double from 1 s up to this.",
    )
    storage_patience: float = Field(
        default=600.0,
        ge=0,
        description="Seconds a worker keeps a generated item's encoded images in memory, "
        "retrying the upload while storage is down, before it defers the item (its images are "
        "then rendered again later).",
    )
    max_input_deferrals: int = Field(
        default=8,
        ge=0,
        description="Deferrals of an item whose http(s) input host keeps failing transiently "
        "before the item fails (storage outages defer without limit).",
    )
    webhook_secret: str | None = Field(
        default=None,
        description="Signs the webhooks of jobs submitted in open mode (default: a secret made "
        "on first use in DATA_DIR/webhook-secret; set it where the API and the control worker "
        "do not share a data dir). In keys mode each key has its own.",
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, description="Seconds one webhook attempt may take."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Attempts of one webhook delivery before it is failed."
    )
    webhook_retry_delay: float = Field(
        default=5.0,
        gt=0,
        description="Wait after a failed webhook attempt, doubling with each (at most 10 min).",
    )
    retention_days: float = Field(
        default=0,
        ge=0,
        description="Delete finished jobs (their results, images and rows) and uploaded files "
        "older than this many days, in bounded batches each sweep; 0 keeps everything.",
    )
    default_completion_window: str = Field(
        default="",
        description="Completion window of a job that names neither completion_window nor "
        "expires_at (30m, 24h, 7d or seconds): items not finished by then expire. Empty or 0: "
        "such jobs never expire.",
    )
    max_completion_window: str = Field(
        default="30d",
        description="Longest completion window (or expires_at from now) a job may ask for; a "
        "longer one gets 422. Empty or 0: no maximum.",
    )
    flower_url: str = Field(
        default="http://127.0.0.1:5555", description="Flower address linked from the dashboard."
    )
    metrics_port: int | None = Field(
        default=None, description="Worker: serve Prometheus metrics on this port."
    )
    metrics_token: str | None = Field(
        default=None,
        description="API: when set, GET /metrics needs `Authorization: Bearer <token>` (else "
        "401); unset, /metrics is open: keep it on an internal network (README, Security).",
    )

    @field_validator("egress_allow")
    @classmethod
    def _valid_egress_allow(cls, value: str) -> str:
        from janus_batch.egress import parse_allow

        parse_allow(value)  # a malformed entry is a startup error, not a silent no-op
        return value

    @field_validator("default_completion_window", "max_completion_window")
    @classmethod
    def _valid_window(cls, value: str) -> str:
        from janus_batch.expiry import parse_window

        if value.strip():
            parse_window(value)  # a malformed window is a startup error
        return value

    def completion_windows(self) -> tuple[int, int]:
        """Seconds of (default_completion_window, max_completion_window); 0 when empty."""
        from janus_batch.expiry import parse_window

        windows = (self.default_completion_window, self.max_completion_window)
        default, longest = (parse_window(w) if w.strip() else 0 for w in windows)
        return default, longest

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file inside data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'janus-batch.db').resolve()}"

    def resolved_model_name(self) -> str:
        """The public name of the model this process serves (MODEL_NAME, else MODEL)."""
        return self.model_name or self.model

    def resolved_default_model(self) -> str:
        """The public name of the model of jobs that name none."""
        return self.default_model or self.resolved_model_name()

    def served_model_names(self) -> list[str]:
        """The names SERVED_MODELS lists, and the default model, in that order, once each."""
        names = [name.strip() for name in self.served_models.split(",")]
        return list(dict.fromkeys([self.resolved_default_model(), *filter(None, names)]))

    def resolved_storage_url(self) -> str:
        """The storage URL, defaulting to data_dir/results."""
        if self.storage_url:
            return self.storage_url
        return str((self.data_dir / "results").resolve())


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
